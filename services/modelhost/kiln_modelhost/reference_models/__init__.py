"""The reference models that Kiln's local Triton server runs on the CPU.

Pure functions doing real work (espeak-ng speech, a procedural image renderer, sandbox examples);
server.py binds them to Triton models (handlers.py parses their requests).
"""

from kiln_modelhost.reference_models.errors import (
    ModelError,
    ModelInputError,
    ModelRuntimeError,
    SandboxFailedError,
)
from kiln_modelhost.reference_models.image import render_image
from kiln_modelhost.reference_models.sandbox import sandbox_example
from kiln_modelhost.reference_models.speech import synthesize_speech

__all__ = [
    "ModelError",
    "ModelInputError",
    "ModelRuntimeError",
    "SandboxFailedError",
    "render_image",
    "sandbox_example",
    "synthesize_speech",
]
