"""The model host starts Triton with the models' configurations taken as given, without
auto-complete (kiln_modelhost.server.without_auto_complete): the Python backend then starts no
extra stub per model, and the eleven models load in about a third of the time."""

from pathlib import Path

import pytest

from kiln_modelhost.server import without_auto_complete


def test_triton_is_started_without_auto_complete(tmp_path: Path) -> None:
    from pytriton.triton import Triton, TritonConfig

    # Building a Triton writes its workspace and server arguments; nothing is started.
    triton = without_auto_complete(Triton)(
        config=TritonConfig(http_port=1, grpc_port=2, metrics_port=3),
        workspace=tmp_path / "workspace",
    )
    arguments = triton._triton_server_config.to_args_list()
    assert ["--strict-model-config", "true"] in pairs(arguments)
    assert ["--model-control-mode", "explicit"] in pairs(arguments)  # PyTriton's own are kept


def pairs(arguments: list[str]) -> list[list[str]]:
    return [arguments[i : i + 2] for i in range(len(arguments) - 1)]


def test_a_pytriton_without_that_step_starts_as_before(caplog: pytest.LogCaptureFixture) -> None:
    class OtherTriton:
        pass

    assert without_auto_complete(OtherTriton) is OtherTriton
    assert "auto-complete stays on" in caplog.text
