"""Kiln inference: a worker that runs dispatched jobs on Triton."""
