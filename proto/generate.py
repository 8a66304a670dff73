"""Regenerate the Python code of Kiln's event contracts from the .proto files.

    uv run python proto/generate.py                    # rewrite kiln_contracts/**/*_pb2.py(i)
    uv run python proto/generate.py --update-snapshot  # ... and descriptor_snapshot.json
    uv run python proto/generate.py --check            # exit 1 if the committed code is stale
    uv run python proto/generate.py --out DIR          # write under DIR instead (tests use it)

The include root is `proto/` (so files import each other as "kiln_contracts/v1/common.proto"),
plus the well-known types bundled with grpcio-tools. `*_pb2.py` come from protoc's Python
generator, `*_pb2.pyi` from mypy-protobuf. The output depends only on the .proto files and the
versions of grpcio-tools and mypy-protobuf, which the workspace lock pins: the same inputs give
the same bytes, and tests/unit/contracts fails when the committed files differ from them.

`--update-snapshot` refuses a snapshot that breaks the committed one (removed, renumbered or
retyped fields) unless `--allow-breaking` is given as well.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet

PROTO_ROOT = Path(__file__).resolve().parent  # the include root
PACKAGE = "kiln_contracts"
PACKAGE_DIR = PROTO_ROOT / PACKAGE
SNAPSHOT_NAME = "descriptor_snapshot.json"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi")
MYPY_PLUGIN = "protoc-gen-mypy"

Snapshot = dict[str, list[dict[str, Any]]]


class GenerateError(RuntimeError):
    """The generator could not run or refused to write."""


def _load_snapshot_module() -> ModuleType:
    # Loaded by path, not `import kiln_contracts.snapshot`: importing the package imports the
    # generated modules, which may be missing or stale exactly when this script is needed.
    path = PACKAGE_DIR / "snapshot.py"
    spec = importlib.util.spec_from_file_location("_kiln_contracts_snapshot", path)
    if spec is None or spec.loader is None:
        raise GenerateError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_snapshot_module = _load_snapshot_module()
build_snapshot: Callable[[Iterable[FileDescriptorProto]], Snapshot] = (
    _snapshot_module.build_snapshot
)
dump_snapshot: Callable[[Snapshot], str] = _snapshot_module.dump_snapshot
compatibility_problems: Callable[[Mapping[str, Any], Snapshot], list[str]] = (
    _snapshot_module.compatibility_problems
)


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.proto"))


def _mypy_plugin() -> Path:
    beside_python = Path(sys.executable).parent / MYPY_PLUGIN
    if beside_python.is_file():
        return beside_python
    found = shutil.which(MYPY_PLUGIN)
    if found is None:
        raise GenerateError(
            f"{MYPY_PLUGIN} not found: install mypy-protobuf (the workspace's dev group has it)"
        )
    return Path(found)


def run_protoc(out_dir: Path, descriptor_set: Path) -> None:
    """Generate `*_pb2.py` and `*_pb2.pyi` under `out_dir` and the descriptor set of our files."""
    try:
        protoc = importlib.import_module("grpc_tools.protoc")
    except ImportError as exc:
        raise GenerateError(
            "grpcio-tools is not installed (the workspace's dev group has it)"
        ) from exc
    well_known_types = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    files = proto_files()
    if not files:
        raise GenerateError(f"no .proto files under {PACKAGE_DIR}")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known_types}",
        f"--python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
        f"--mypy_out=quiet:{out_dir}",
        f"--descriptor_set_out={descriptor_set}",
        *(str(path) for path in files),
    ]
    code = protoc.main(args)
    if code != 0:
        raise GenerateError(f"protoc failed with exit code {code}")


def generated_files(root: Path) -> dict[Path, bytes]:
    """The generated files under `root`, keyed by their path relative to it."""
    package_dir = root / PACKAGE
    if not package_dir.is_dir():
        return {}
    found = {
        path.relative_to(root): path.read_bytes()
        for pattern in GENERATED_PATTERNS
        for path in package_dir.rglob(pattern)
    }
    return dict(sorted(found.items()))


def generate() -> tuple[dict[Path, bytes], Snapshot]:
    """Run protoc in a scratch folder; return the generated files and the descriptor snapshot."""
    with tempfile.TemporaryDirectory(prefix="kiln-contracts-") as scratch:
        scratch_dir = Path(scratch)
        out_dir = scratch_dir / "out"
        out_dir.mkdir()
        descriptor_set_path = scratch_dir / "descriptors.binpb"
        run_protoc(out_dir, descriptor_set_path)
        descriptor_set = FileDescriptorSet.FromString(descriptor_set_path.read_bytes())
        return generated_files(out_dir), build_snapshot(descriptor_set.file)


def stale_files(expected: Mapping[Path, bytes], root: Path) -> list[Path]:
    """Generated files under `root` that differ from, lack, or are not in `expected`."""
    actual = generated_files(root)
    return sorted(
        path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path)
    )


def write_generated(expected: Mapping[Path, bytes], root: Path) -> list[Path]:
    """Make the generated files under `root` equal `expected`; return the paths changed."""
    changed = stale_files(expected, root)
    for relative in changed:
        path = root / relative
        if relative in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(expected[relative])
        else:
            path.unlink()  # its .proto file is gone
    return changed


def refuse_breaking_snapshot(snapshot: Snapshot) -> None:
    """Raise GenerateError if `snapshot` breaks the committed one."""
    committed_path = PACKAGE_DIR / SNAPSHOT_NAME
    if not committed_path.exists():
        return
    problems = compatibility_problems(_snapshot_module.load_snapshot(committed_path), snapshot)
    if problems:
        raise GenerateError(
            "the .proto files break the committed snapshot (field numbers are never "
            "reused or renumbered); nothing was written:\n  " + "\n  ".join(problems)
        )


def write_snapshot(snapshot: Snapshot, root: Path) -> Path:
    path = root / PACKAGE / SNAPSHOT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_snapshot(snapshot), encoding="utf-8")
    return path


def _unsnapshotted_fields(snapshot: Snapshot) -> int:
    committed_path = PACKAGE_DIR / SNAPSHOT_NAME
    if not committed_path.exists():
        return sum(len(fields) for fields in snapshot.values())
    committed: Snapshot = _snapshot_module.load_snapshot(committed_path)
    known = {(message, field["name"]) for message, fields in committed.items() for field in fields}
    return sum(
        1
        for message, fields in snapshot.items()
        for field in fields
        if (message, field["name"]) not in known
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="root to write under instead of proto/ (DIR/kiln_contracts/...)",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument(
        "--update-snapshot", action="store_true", help=f"also write {SNAPSHOT_NAME}"
    )
    parser.add_argument(
        "--allow-breaking", action="store_true", help="let --update-snapshot break it"
    )
    args = parser.parse_args(argv)
    root: Path = (args.out or PROTO_ROOT).resolve()

    try:
        expected, snapshot = generate()
        if args.check:
            stale = stale_files(expected, root)
            if stale:
                print(
                    "stale generated files (run: uv run python proto/generate.py):", file=sys.stderr
                )
                for path in stale:
                    print(f"  {path}", file=sys.stderr)
                return 1
            print(f"{len(expected)} generated files are up to date")
            return 0
        if args.update_snapshot and not args.allow_breaking:
            refuse_breaking_snapshot(snapshot)
        for path in write_generated(expected, root):
            print(f"wrote {path}" if path in expected else f"removed {path}")
        if args.update_snapshot:
            print(f"wrote {write_snapshot(snapshot, root)}")
        else:
            missing = _unsnapshotted_fields(snapshot)
            if missing:
                print(f"note: {missing} new field(s) not in {SNAPSHOT_NAME}; add --update-snapshot")
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
