"""Operator models on any Triton server: a job's input as the model's input tensors, and its
output tensor as the result file (the catalog entry's ``tensors``, kiln_runtime.catalog).

Pure functions: the worker fetches the files and makes the call (triton_client.infer_tensors).
A value that does not fit its tensor is the job's fault (TensorInputError → INVALID_INPUT);
an output that cannot become the declared file is the model's (TensorOutputError →
MODEL_ERROR).
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from kiln_runtime.catalog import TensorContract, TensorInput, TensorOutput

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class TensorInputError(ValueError):
    """The job's input does not fit the model's input tensors."""


class TensorOutputError(ValueError):
    """The model's output tensor is not a file of the declared kind."""


@dataclass(frozen=True)
class TensorValue:
    name: str
    datatype: str
    array: NDArray[Any]


def _bytes_array(values: NDArray[Any]) -> NDArray[np.object_]:
    out: NDArray[np.object_] = np.empty(values.shape, dtype=np.object_)
    for index, value in np.ndenumerate(values):
        if isinstance(value, bytes):
            out[index] = value
        elif isinstance(value, str):
            out[index] = value.encode("utf-8")
        elif isinstance(value, bool | int | float):
            out[index] = json.dumps(value).encode("utf-8")
        else:
            raise TensorInputError("a BYTES tensor takes strings")
    return out


def _shaped(array: NDArray[Any], spec: TensorInput) -> NDArray[Any]:
    """``array`` in the spec's shape: a lone value fills a shape of ones; -1 dimensions come
    from the value."""
    wanted = spec.shape
    if array.ndim == 0 or (array.size == 1 and all(d in (1, -1) for d in wanted)):
        return array.reshape([1] * len(wanted))
    if array.ndim != len(wanted) or any(
        d != -1 and d != got for d, got in zip(wanted, array.shape, strict=True)
    ):
        raise TensorInputError(
            f"{spec.field} has shape {list(array.shape)}; tensor {spec.tensor} takes {wanted}"
        )
    return array


def _from_value(value: Any, spec: TensorInput) -> NDArray[Any]:
    if spec.source == "json":
        return _shaped(_bytes_array(np.asarray(json.dumps(value), dtype=object)), spec)
    if spec.datatype == "BYTES":
        try:
            array = np.asarray(value, dtype=object)
        except ValueError as exc:
            raise TensorInputError(f"{spec.field} is not a regular array") from exc
        return _shaped(_bytes_array(array), spec)
    try:
        plain = np.asarray(value)
    except ValueError as exc:
        raise TensorInputError(f"{spec.field} is not a regular array") from exc
    if plain.dtype.kind not in "biuf":
        raise TensorInputError(f"{spec.field} must be numbers for tensor {spec.tensor}")
    dtype = np.dtype(NUMPY_TYPES[spec.datatype])
    if dtype.kind in "iu" and plain.size:
        if plain.dtype.kind == "f" and not np.all(np.mod(plain, 1) == 0):
            raise TensorInputError(f"{spec.field} must be whole numbers for {spec.datatype}")
        bounds = np.iinfo(dtype)
        if plain.min() < bounds.min or plain.max() > bounds.max:
            raise TensorInputError(f"{spec.field} does not fit a {spec.datatype} tensor")
    array = plain.astype(dtype)
    return _shaped(array, spec)


def _from_file(data: bytes, spec: TensorInput) -> NDArray[Any]:
    if spec.source == "file":
        if spec.datatype != "BYTES":
            raise TensorInputError(f"tensor {spec.tensor}: a file goes in a BYTES tensor")
        holder: NDArray[np.object_] = np.empty((1,), dtype=np.object_)
        holder[0] = data
        return _shaped(holder, spec)
    try:
        with Image.open(io.BytesIO(data)) as picture:
            rgb = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TensorInputError(f"{spec.field} is not a readable image") from exc
    if spec.datatype == "UINT8":
        return _shaped(rgb, spec)
    if spec.datatype in ("FP16", "FP32", "FP64"):
        return _shaped((rgb / 255.0).astype(NUMPY_TYPES[spec.datatype]), spec)
    raise TensorInputError(f"tensor {spec.tensor}: image_rgb takes UINT8 or floats")


def build_inputs(
    contract: TensorContract, request: Mapping[str, Any], files: Mapping[str, bytes]
) -> list[TensorValue]:
    """The input tensors for one job: ``request`` is the job's input (less its file URLs),
    ``files`` the fetched files by their URL field."""
    tensors: list[TensorValue] = []
    for spec in contract.inputs:
        if spec.source in ("file", "image_rgb"):
            if spec.field not in files:
                continue  # an optional file the job did not name
            array = _from_file(files[spec.field], spec)
        elif spec.field in request:
            array = _from_value(request[spec.field], spec)
        elif spec.default is not None:
            array = _from_value(spec.default, spec)
        else:
            continue  # the model's optional input
        if contract.batching:
            array = array[np.newaxis, ...]
        tensors.append(TensorValue(spec.tensor, spec.datatype, array))
    return tensors


def _image_pixels(array: NDArray[Any], batching: bool) -> NDArray[np.uint8]:
    pixels = array[0] if batching and array.ndim == 4 else array
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4) and pixels.shape[-1] not in (1, 3, 4):
        pixels = pixels.transpose(1, 2, 0)  # planar (C, H, W)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise TensorOutputError(f"an image tensor has shape {list(array.shape)}")
    if pixels.dtype.kind == "f":
        return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if pixels.dtype != np.uint8:
        raise TensorOutputError(f"an image tensor of {pixels.dtype} is neither UINT8 nor floats")
    return pixels


def _wav(array: NDArray[Any], batching: bool, sample_rate: int) -> bytes:
    samples = array[0] if batching and array.ndim >= 2 else array
    samples = samples.reshape(-1)
    if samples.dtype.kind == "f":
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    elif samples.dtype == np.int16:
        pcm = samples.astype("<i2")
    else:
        raise TensorOutputError(f"an audio tensor of {samples.dtype} is neither INT16 nor floats")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def result_file(output: TensorOutput, array: NDArray[Any] | None, batching: bool) -> bytes:
    """The job's result file from the model's output tensor."""
    if array is None or array.size == 0:
        raise TensorOutputError(f"the model returned no {output.tensor}")
    if output.encoding == "file":
        value = array.reshape(-1)[0]
        if isinstance(value, np.bytes_ | bytes):
            return bytes(value)
        raise TensorOutputError(f"{output.tensor} is not a BYTES tensor")
    if output.encoding == "png":
        buffer = io.BytesIO()
        Image.fromarray(_image_pixels(array, batching)).save(buffer, format="PNG")
        return buffer.getvalue()
    return _wav(array, batching, output.sample_rate)
