"""Kiln billing: owns every credit. Nothing else changes a balance."""
