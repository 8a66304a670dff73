"""TLS on a pinned connection, for real: an HTTPS receiver on loopback with a certificate for
`hooks.kiln.test` only, names mapped by an injected resolver. The connection goes to the
checked address (an IP the certificate does not name), and the certificate is verified against
the URL's host name: the right name is delivered, another name for the same address fails."""

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiln_notifier.pinned_http import PinnedClients
from kiln_notifier.repository import ClaimedDelivery
from kiln_notifier.sender import attempt_delivery
from tests.integration.notifier.conftest import DEFAULT_SECRET

NAME = "hooks.kiln.test"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, list[dict[str, str]]]]:
    cert, key = self_signed(tmp_path)
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert, seen
    server.shutdown()


def claim(url: str) -> ClaimedDelivery:
    return ClaimedDelivery(
        id="dlv_tls",
        webhook_id="evt_tls",
        account_id="acct_1",
        job_id="job_1",
        endpoint_id="",
        url=url,
        event_type="job.completed",
        payload='{"type":"job.completed"}',
        attempts=0,
        trace_id="",
    )


async def to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]  # every name, whatever it is


async def test_tls_is_verified_against_the_url_host_on_a_pinned_address(
    https_receiver: tuple[int, Path, list[dict[str, str]]],
) -> None:
    port, cert, seen = https_receiver
    trust = ssl.create_default_context(cafile=str(cert))
    client = PinnedClients(per_endpoint=4, keepalive_s=30, ssl_context=trust)
    try:
        good = await attempt_delivery(
            client,
            claim(f"https://{NAME}:{port}/hook"),
            DEFAULT_SECRET,
            allow_loopback=True,
            timeout_s=5,
            now=dt.datetime.now(dt.UTC),
            resolver=to_loopback,
        )
        assert good.status_code == 204, good.error
        assert seen[-1]["host"] == f"{NAME}:{port}"
        wrong = await attempt_delivery(
            client,
            claim(f"https://other.kiln.test:{port}/hook"),
            DEFAULT_SECRET,
            allow_loopback=True,
            timeout_s=5,
            now=dt.datetime.now(dt.UTC),
            resolver=to_loopback,
        )
        assert wrong.status_code is None and wrong.error
        assert "TLS" in wrong.error
        # The kept-alive connection to the right name is reused, never for the other name.
        again = await attempt_delivery(
            client,
            claim(f"https://{NAME}:{port}/hook"),
            DEFAULT_SECRET,
            allow_loopback=True,
            timeout_s=5,
            now=dt.datetime.now(dt.UTC),
            resolver=to_loopback,
        )
        assert again.status_code == 204, again.error
    finally:
        await client.aclose()
    assert len(seen) == 2  # the wrong name never got a request through
