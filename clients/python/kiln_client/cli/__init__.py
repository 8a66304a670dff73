"""The `kiln` command line (`pip install "kiln-client[cli]"`)."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from kiln_client.cli.app import app
    except ImportError as exc:  # typer or rich missing: the [cli] extra was not installed
        sys.stderr.write(
            f"kiln: the command line needs its extra dependencies ({exc.name}): "
            'pip install "kiln-client[cli]"\n'
        )
        raise SystemExit(1) from None
    app()
