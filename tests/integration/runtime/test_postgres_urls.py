"""The URLs operators are given, against a real PostgreSQL that speaks TLS and asks for a
password (Debian's server, a throwaway cluster with a certificate made here): both of a service's
engines (psycopg for the runtime, asyncpg for the rare async paths) connect with `sslmode`, verify
the server with `sslrootcert`, refuse a server they cannot verify, and every service's migrations
run over such a URL (`python -m kiln_<service>.migrate`, what the Kubernetes Jobs run)."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import ipaddress
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from kiln_runtime.db import make_async_engine, make_sync_engine
from tests.integration.billing.postgres_cluster import PostgresCluster, find_pg_bin
from tests.stack_support import stack

PASSWORD = "pa:ss/w@rd"  # characters a URL must escape
SERVICES = ("gateway", "billing", "scheduler", "inference", "notifier")
SESSION = text(
    "SELECT ssl, current_user, current_setting('application_name'), current_setting('TimeZone') "
    "FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
)
Session = tuple[bool, str, str, str]  # ssl, user, application_name, TimeZone


def _authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _write_tls(folder: Path) -> dict[str, Path]:
    """A CA, the server's certificate for 127.0.0.1 signed by it, and a CA that signed nothing."""
    ca_key, ca = _authority("kiln test CA")
    _, stranger = _authority("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": folder / "ca.crt",
        "stranger": folder / "stranger.crt",
        "cert": folder / "server.crt",
        "key": folder / "server.key",
    }
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["stranger"].write_bytes(stranger.public_bytes(pem))
    files["cert"].write_bytes(cert.public_bytes(pem))
    files["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for path in folder.iterdir():
        path.chmod(0o600 if path.name.endswith(".key") else 0o644)
        stack.postgres.hand_to_server_user(path)  # the server reads its key as its own user
    folder.chmod(0o755)
    return files


@pytest.fixture(scope="module")
def tls() -> Iterator[dict[str, Path]]:
    folder = Path(tempfile.mkdtemp(prefix="kiln-pg-tls-"))
    try:
        yield _write_tls(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tls: dict[str, Path]) -> Iterator[PostgresCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (make install installs Debian's postgresql)")
    settings = {
        "ssl": "on",
        "ssl_cert_file": f"'{tls['cert']}'",
        "ssl_key_file": f"'{tls['key']}'",
        "timezone": "'America/New_York'",  # Kiln's sessions run in UTC all the same
    }
    started = PostgresCluster.start(bin_dir, user="kiln", password=PASSWORD, settings=settings)
    try:
        yield started
    finally:
        started.stop()


def _database(cluster: PostgresCluster, name: str) -> str:
    cluster.server.create_databases([name])
    url: str = cluster.server.url(name)  # postgresql://kiln:pa%3Ass%2Fw%40rd@127.0.0.1:…/name
    return url


def _sync_session(url: str) -> Session:
    """A session of the sync engine (psycopg)."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(SESSION).one()
            return row[0], row[1], row[2], row[3]
    finally:
        engine.dispose()


def _async_session(url: str) -> Session:
    """The same of the async engine (asyncpg)."""

    async def session() -> Session:
        engine = make_async_engine(url)
        try:
            async with engine.connect() as connection:
                row = (await connection.execute(SESSION)).one()
                return row[0], row[1], row[2], row[3]
        finally:
            await engine.dispose()

    return asyncio.run(session())


def _both_engines(url: str) -> list[Session]:
    return [_sync_session(url), _async_session(url)]


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_sslmode_require_encrypts_both_engines_sessions(
    cluster: PostgresCluster, scheme: str
) -> None:
    url = _database(cluster, "urls").replace("postgresql://", f"{scheme}://", 1)
    encrypted = _both_engines(f"{url}?sslmode=require&application_name=kiln-test")
    assert encrypted == [(True, "kiln", "kiln-test", "UTC")] * 2
    assert _both_engines(f"{url}?sslmode=disable") == [(False, "kiln", "", "UTC")] * 2


def test_verify_full_checks_the_server_against_the_given_authority(
    cluster: PostgresCluster, tls: dict[str, Path]
) -> None:
    url = _database(cluster, "urls")
    verified = f"{url}?sslmode=verify-full&sslrootcert={tls['ca']}"
    assert _both_engines(verified) == [(True, "kiln", "", "UTC")] * 2
    unverifiable = f"{url}?sslmode=verify-full&sslrootcert={tls['stranger']}"
    for session in (_sync_session, _async_session):
        with pytest.raises(Exception, match=r"(?i)certificate verify failed"):
            session(unverifiable)


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_migrations_run_over_an_operators_url(
    cluster: PostgresCluster,
    tls: dict[str, Path],
    service: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m kiln_<service>.migrate`'s `main` (in this process: an interpreter start per
    service would cost more than the migrations), its settings from the environment."""
    url = _database(cluster, f"migrate_{service}")
    monkeypatch.setenv("KILN_DATABASE_URL", f"{url}?sslmode=verify-full&sslrootcert={tls['ca']}")
    command = importlib.import_module(f"kiln_{service}.migrate")
    assert command.main() == 0
    assert "schema at revision" in capsys.readouterr().out
    assert command.main() == 0  # and again: nothing left to do
