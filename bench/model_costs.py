"""Each model's cost (issue 15, item 8): the CPU time one job takes in the model host, and the
batch sizes Triton's dynamic batcher formed.

Method: for each model of Kiln's model host, JOBS requests with a small, realistic input (the
same as tests/integration/modelhost uses) are sent straight to the stack's Triton server
(kiln_inference.triton_client.infer_file, the worker's client) with CONCURRENCY in flight, after
one warm-up request (which loads the network). Measured around the JOBS requests:

* CPU seconds per job: the CPU time of the Triton process and its children (tritonserver and
  the Python stubs; psutil), divided by the jobs. Everything else the host did in that span
  counts too, so run it on a quiet stack (the bench waits for the pipeline to drain first).
* Batch sizes: Triton's own counters for the model (``nv_inference_count`` requests over
  ``nv_inference_exec_count`` executions, from its metrics endpoint) give the mean; the model
  host's log lines (``model=… batch=N``) give the largest batch.

No timing is asserted anywhere; the numbers are printed and kept in bench/results.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.context import BenchContext
from bench.footprint import group_processes
from bench.results import Measurement
from bench.submit_latency import wait_drained
from kiln_inference.triton_client import TritonInferenceError, close_clients, infer_file

BENCH = "models"
_METRIC = re.compile(
    r'^(nv_inference_count|nv_inference_exec_count)\{model="([^"]+)"[^}]*\} (\S+)$'
)


def _png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _photo(width: int, height: int) -> Image.Image:
    from skimage import data as samples

    pixels = getattr(samples, "coffee")()  # noqa: B009 (skimage's loaders are untyped)
    return Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)


def _scenes_video() -> str:
    """Nine seconds of four scenes (scikit-image photos), 192x108 at 12 fps, as base64."""
    import imageio_ffmpeg
    from skimage import data as samples

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scenes.mp4"
        writer = imageio_ffmpeg.write_frames(str(path), (192, 108), fps=12, macro_block_size=4)
        writer.send(None)
        for name, seconds in (("coffee", 2.5), ("chelsea", 1.5), ("rocket", 3.0), ("coins", 2.0)):
            picture = Image.fromarray(getattr(samples, name)()).convert("RGB")
            for index in range(round(seconds * 12)):
                zoom = 1.0 + 0.15 * index / (seconds * 12)
                w, h = picture.width / zoom, picture.height / zoom
                box = (0.0, (picture.height - h) / 2, w, (picture.height + h) / 2)
                frame = picture.resize((192, 108), Image.Resampling.BICUBIC, box=box)
                writer.send(frame.tobytes())
        writer.close()
        return base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass(frozen=True)
class ModelCase:
    triton_model: str
    catalog_id: str
    what: str  # the input, for the table
    request: Callable[[int], dict[str, Any]]  # job number → request
    timeout_s: float = 300.0


def cases() -> list[ModelCase]:
    sentence = "The lighthouse keeper climbed the stairs before the storm."
    coffee_600 = _png(_photo(600, 400))
    coffee_256 = _png(_photo(256, 170))
    small = _png(_photo(150, 100))
    tiny = _png(_photo(48, 32))
    video = _scenes_video()
    return [
        ModelCase("tts_hibari", "kiln/speech", "one sentence (~3 s)",
                  lambda i: {"text": sentence, "seed": i}),
        ModelCase("tts_espeak", "kiln/text-to-speech", "one sentence (~3 s)",
                  lambda i: {"text": sentence, "words_per_minute": 170 + i}),
        ModelCase("background_u2netp", "kiln/remove-background", "600x400 photo",
                  lambda i: {"image_b64": coffee_600, "crop": bool(i % 2)}),
        ModelCase("product_shot_u2netp", "kiln/product-shot", "600x400 photo → 512 px",
                  lambda i: {"image_b64": coffee_600, "size": 512, "padding": 0.1 + i / 100}),
        ModelCase("upscale_realesr_compact", "kiln/upscale", "150x100 → x4",
                  lambda i: {"image_b64": small, "scale": 4}),
        ModelCase("upscale_realesrgan_x4plus", "kiln/upscale-x4plus", "48x32 → x4",
                  lambda i: {"image_b64": tiny, "scale": 4}, 900.0),
        ModelCase("autoclip_scenedetect", "kiln/auto-clip", "9 s 192x108 video, 4 scenes",
                  lambda i: {"video_b64": video, "min_duration_s": 1, "max_clips": 2 + i % 2}),
        ModelCase("image_procedural", "kiln/prompt-to-image", "256x256 render",
                  lambda i: {"prompt": "a harbour at dusk", "seed": i, "width": 256,
                             "height": 256}),
        ModelCase("image_edit", "kiln/image-edit", "256x170 photo",
                  lambda i: {"image_b64": coffee_256, "prompt": "autumn", "seed": i}),
        ModelCase("video_camera", "kiln/image-to-video", "2 s 256x256 at 12 fps",
                  lambda i: {"image_b64": coffee_256, "duration_s": 2, "fps": 12, "width": 256,
                             "height": 256, "motion": ("zoom_in", "pan_left")[i % 2]}),
    ]  # fmt: skip


def triton_counters(metrics_url: str) -> dict[str, tuple[float, float]]:
    """Per model: (requests, executions) from Triton's Prometheus endpoint."""
    text = httpx.get(metrics_url, timeout=10).text
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            name, model, value = match.groups()
            pair = found.setdefault(model, [0.0, 0.0])
            pair[0 if name == "nv_inference_count" else 1] += float(value)
    return {model: (pair[0], pair[1]) for model, pair in found.items()}


def largest_batch(log: Path, model: str, offset: int) -> int:
    """The largest ``batch=`` the model host logged for ``model`` past ``offset`` bytes."""
    pattern = re.compile(rf"model={re.escape(model)} batch=(\d+)")
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", "replace")
    return max((int(m) for m in pattern.findall(text)), default=0)


def _cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in group_processes([pid]):
        try:
            times = process.cpu_times()
        except Exception:  # a stub that exited
            continue
        # children_*: helpers that ran and were waited for in the span (ffmpeg, espeak-ng)
        total += float(times.user + times.system + times.children_user + times.children_system)
    return total


async def _drive(url: str, case: ModelCase, jobs: int, concurrency: int) -> list[str]:
    queue = list(range(jobs))
    errors: list[str] = []

    async def client() -> None:
        while queue:
            index = queue.pop()
            try:
                await infer_file(url, case.triton_model, case.request(index), case.timeout_s)
            except TritonInferenceError as exc:
                errors.append(exc.code)

    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        await close_clients(url)
    return errors


def run(ctx: BenchContext) -> None:
    stack = ctx.kiln()
    jobs: int = ctx.size(2, 8)
    concurrency: int = ctx.size(2, 4)
    wait_drained(stack, ctx.size(60.0, 300.0))
    pid = stack.local.pid("triton")
    if pid is None:
        raise RuntimeError("the bench stack's Triton is not running")
    metrics_url = f"http://127.0.0.1:{stack.local.ports.triton_metrics}/metrics"
    log = stack.local.log_file("triton")
    measurements: list[Measurement] = []
    for case in cases():
        jobs_here = max(1, jobs // 4) if case.triton_model == "upscale_realesrgan_x4plus" else jobs
        per_job: list[float] = []
        mean_batch: list[float] = []
        biggest = 0
        problems: list[str] = []
        for repeat in range(ctx.repeats):
            # warm-up: the first request loads the network in the instance that takes it
            asyncio.run(_drive(stack.triton_grpc_url, case, 1, 1))
            before = triton_counters(metrics_url).get(case.triton_model, (0.0, 0.0))
            offset = log.stat().st_size
            cpu_before = _cpu_seconds(pid)
            started = time.monotonic()
            errors = asyncio.run(_drive(stack.triton_grpc_url, case, jobs_here, concurrency))
            wall = time.monotonic() - started
            cpu = _cpu_seconds(pid) - cpu_before
            after = triton_counters(metrics_url).get(case.triton_model, (0.0, 0.0))
            requests, executions = after[0] - before[0], after[1] - before[1]
            per_job.append(cpu / jobs_here)
            mean_batch.append(requests / executions if executions else float("nan"))
            biggest = max(biggest, largest_batch(log, case.triton_model, offset))
            if errors:
                problems.append(f"{len(errors)} failed ({', '.join(sorted(set(errors)))})")
            ctx.echo(
                f"models: {case.catalog_id} ({case.triton_model}) repeat {repeat + 1}: "
                f"{cpu / jobs_here:.2f} CPU s/job, {wall:.1f} s wall for {jobs_here}, "
                f"batch mean {mean_batch[-1]:.2f}, largest {biggest}"
            )
        note = (
            f"{case.what}; {jobs_here} jobs, {concurrency} in flight. Triton batch sizes: "
            f"mean {np.nanmedian(mean_batch):.2f}, largest {biggest}."
        )
        if problems:
            note += " " + "; ".join(problems)
        measurements.append(
            Measurement(BENCH, f"{case.catalog_id} CPU per job", "CPU s", per_job, note=note)
        )
        measurements.append(
            Measurement(
                BENCH,
                f"{case.catalog_id} mean Triton batch",
                "requests",
                mean_batch,
                better="higher",
                note=f"largest batch {biggest}",
            )
        )
    ctx.report.add(measurements)
    ctx.report.note_limit(
        BENCH,
        "CPU per job is the model host's whole process tree over the measured span, on a shared "
        "machine: other load on Triton in that span counts too.",
    )
