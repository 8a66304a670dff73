"""Kiln gateway: the public HTTP API v1."""
