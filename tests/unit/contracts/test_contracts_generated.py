"""The committed generated code is exactly what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "proto"
GENERATE = PROTO_ROOT / "generate.py"
PATTERNS = ("*_pb2.py", "*_pb2.pyi")
REGENERATE = "uv run python proto/generate.py"


def _generated(root: Path) -> dict[str, bytes]:
    package_dir = root / "kiln_contracts"
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for pattern in PATTERNS
        for path in package_dir.rglob(pattern)
    }


def _gencode_version(source: bytes) -> str:
    for line in source.decode().splitlines():
        if line.startswith("# Protobuf Python Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, f"generate.py failed:\n{run.stdout}\n{run.stderr}"

    fresh = _generated(tmp_path)
    committed = _generated(PROTO_ROOT)
    assert fresh, "the generator produced no files"
    assert sorted(committed) == sorted(fresh), f"generated file set differs; run `{REGENERATE}`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    if stale:
        some_py = next(name for name in fresh if name.endswith(".py"))
        raise AssertionError(
            f"stale generated files {stale}; run `{REGENERATE}` and commit the result "
            f"(protobuf gencode: committed {_gencode_version(committed[some_py])}, "
            f"this environment's generator {_gencode_version(fresh[some_py])})"
        )


def test_every_proto_file_has_generated_modules() -> None:
    for proto in sorted((PROTO_ROOT / "kiln_contracts").rglob("*.proto")):
        stem = proto.with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            assert Path(f"{stem}{suffix}").is_file(), f"{proto.name} has no {suffix}"
