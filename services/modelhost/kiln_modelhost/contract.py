"""The one tensor contract of every model the host serves (kiln_inference.triton_client, the
worker's client, speaks it): the model names, the input and output tensors, and the limits a
request is held to. What each model's request holds is in handlers.py."""

from __future__ import annotations

REQUEST_INPUT = "request"
OUTPUT = "output"
CONTENT_TYPE_OUTPUT = "content_type"
ERROR_OUTPUT = "error"

TTS_MODEL = "tts_espeak"
IMAGE_MODEL = "image_procedural"
EDIT_MODEL = "image_edit"
VIDEO_MODEL = "video_camera"
SANDBOX_MODEL = "sandbox"
NEURAL_TTS_MODEL = "tts_hibari"
REMOVE_BACKGROUND_MODEL = "background_u2netp"
PRODUCT_SHOT_MODEL = "product_shot_u2netp"
UPSCALE_MODEL = "upscale_realesr_compact"
UPSCALE_X4PLUS_MODEL = "upscale_realesrgan_x4plus"
AUTOCLIP_MODEL = "autoclip_scenedetect"

ALL_MODELS = (
    TTS_MODEL,
    IMAGE_MODEL,
    EDIT_MODEL,
    VIDEO_MODEL,
    SANDBOX_MODEL,
    NEURAL_TTS_MODEL,
    REMOVE_BACKGROUND_MODEL,
    PRODUCT_SHOT_MODEL,
    UPSCALE_MODEL,
    UPSCALE_X4PLUS_MODEL,
    AUTOCLIP_MODEL,
)

# A sandbox request holds a model instance for its whole delay, even after its client gave up.
MAX_SANDBOX_DELAY_MS = 600_000
SANDBOX_OUTCOMES = ("completed", "failed")
