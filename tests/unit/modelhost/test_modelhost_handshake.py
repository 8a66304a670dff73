"""The stub code sent to Triton waits long enough for the first instance's handshake socket and
looks for a stop often (kiln_modelhost.server.patch_stub_code)."""

from types import SimpleNamespace

from kiln_modelhost.server import HANDSHAKE_WAIT_S, STUB_STOP_CHECK_S, patch_stub_code


def test_the_stub_waits_for_the_handshake_socket() -> None:
    from pytriton.models.model import Model

    fake_model = SimpleNamespace(SCRIPT_FILES_TO_COPY=Model.SCRIPT_FILES_TO_COPY, model_version=1)
    before = Model.get_proxy_model_files(fake_model)
    patch_stub_code()
    patch_stub_code()  # twice changes nothing more
    after = Model.get_proxy_model_files(fake_model)
    source = after["file:1/communication.py"].decode()
    assert f"timeout_s: float = {HANDSHAKE_WAIT_S})" in source
    assert "timeout_s: float = 1.0)" not in source
    assert "except ConnectionRefusedError:" in source  # a refused connect is tried again
    assert f"flag_check_interval_s = {STUB_STOP_CHECK_S}" in source
    assert "flag_check_interval_s = 1.0" not in source
    compile(source, "communication.py", "exec")  # still Python
    # Only those lines changed; the other files are PyTriton's own.
    assert before.keys() == after.keys()
    assert all(before[name] == after[name] for name in before if "communication" not in name)
