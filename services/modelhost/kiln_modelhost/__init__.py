"""Kiln model host: a Triton Inference Server (PyTriton) with Kiln's reference models."""
