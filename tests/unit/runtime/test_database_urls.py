"""The database URLs operators are given, as each engine gets them (kiln_runtime.db): plain
`postgresql://` and `postgres://` URLs and ones naming another driver get Kiln's drivers, and
libpq's parameters reach asyncpg with libpq's meaning (tests/integration/runtime/
test_postgres_urls.py connects with them to a real server)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine.url import make_url

from kiln_runtime.db import (
    UnsupportedDatabase,
    async_connection,
    async_url,
    libpq_url,
    sync_url,
)

OPERATOR_URLS = [
    "postgresql://kiln:pa%3Ass@db.example:5432/billing?sslmode=require",
    "postgres://kiln:pa%3Ass@db.example:5432/billing?sslmode=require",
    "postgresql+psycopg://kiln:pa%3Ass@db.example:5432/billing?sslmode=require",
    "postgresql+psycopg2://kiln:pa%3Ass@db.example:5432/billing?sslmode=require",
    "postgresql+asyncpg://kiln:pa%3Ass@db.example:5432/billing?sslmode=require",
]


@pytest.mark.parametrize("url", OPERATOR_URLS)
def test_every_form_operators_get_names_the_same_database_with_kilns_drivers(url: str) -> None:
    sync = sync_url(url)
    assert sync.drivername == "postgresql+psycopg"
    assert (sync.username, sync.password, sync.host, sync.port, sync.database) == (
        "kiln",
        "pa:ss",
        "db.example",
        5432,
        "billing",
    )
    assert dict(sync.query) == {"sslmode": "require"}  # libpq reads it as it is
    assert async_url(url).drivername == "postgresql+asyncpg"


@pytest.mark.parametrize("url", OPERATOR_URLS)
def test_sslmode_goes_to_asyncpg_as_libpq_parameters_not_as_keywords(url: str) -> None:
    # As a keyword, asyncpg.connect(sslmode=...) raises TypeError; its DSN parser knows it.
    engine_url, connect_args = async_connection(url)
    assert engine_url.drivername == "postgresql+asyncpg"
    assert dict(engine_url.query) == {}
    assert (engine_url.password, engine_url.host, engine_url.database) == (
        "pa:ss",
        "db.example",
        "billing",
    )
    assert connect_args == {
        "dsn": "postgresql://?sslmode=require",
        "server_settings": {"timezone": "UTC"},
    }


def test_certificate_files_and_session_settings_keep_their_libpq_meaning() -> None:
    url = (
        "postgresql://app@db:5432/app?sslmode=verify-full&sslrootcert=/etc/kiln/ca.crt"
        "&sslcert=/etc/kiln/tls.crt&sslkey=/etc/kiln/tls.key&application_name=kiln-billing"
        "&target_session_attrs=read-write&connect_timeout=10"
        "&options=-c%20statement_timeout%3D5000%20-c%20lock_timeout%3D2000"
    )
    engine_url, connect_args = async_connection(url)
    assert engine_url.drivername == "postgresql+asyncpg" and not engine_url.query
    dsn = make_url(connect_args.pop("dsn"))
    assert dict(dsn.query) == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/kiln/ca.crt",
        "sslcert": "/etc/kiln/tls.crt",
        "sslkey": "/etc/kiln/tls.key",
        "application_name": "kiln-billing",
        "target_session_attrs": "read-write",
    }
    assert connect_args == {
        "timeout": 10.0,
        "server_settings": {"timezone": "UTC", "statement_timeout": "5000", "lock_timeout": "2000"},
    }


def test_a_socket_folder_and_several_hosts_stay_with_sqlalchemy() -> None:
    engine_url, connect_args = async_connection("postgresql:///kiln?host=/run/postgresql")
    assert dict(engine_url.query) == {"host": "/run/postgresql"}
    assert connect_args == {"server_settings": {"timezone": "UTC"}}


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=require&channel_binding=require",  # asyncpg does no channel binding
        "gssencmode=require",
        "keepalives_idle=30",
        "options=-X",  # not a setting: only libpq knows what to do with it
    ],
)
def test_what_asyncpg_cannot_do_gets_libpq_through_psycopgs_async_mode(query: str) -> None:
    url = f"postgresql://kiln@db/billing?{query}"
    engine_url, connect_args = async_connection(url)
    assert engine_url.drivername == "postgresql+psycopg"
    given = dict(make_url(url).query)  # libpq reads them as the sync engine does
    options = f"-c timezone=UTC {given['options']}" if "options" in given else "-c timezone=UTC"
    assert dict(engine_url.query) == {**given, "options": options}
    assert connect_args == {}


def test_sessions_run_in_utc_unless_the_url_says_otherwise() -> None:
    plain = libpq_url(sync_url("postgresql://kiln@db/billing?sslmode=require"))
    assert dict(plain.query) == {"sslmode": "require", "options": "-c timezone=UTC"}
    theirs = libpq_url(sync_url("postgresql://kiln@db/billing?options=-c%20timezone%3DEST"))
    assert theirs.query["options"] == "-c timezone=UTC -c timezone=EST"  # the last one wins
    _, connect_args = async_connection("postgresql://kiln@db/billing?options=-c%20timezone%3DEST")
    assert connect_args["server_settings"] == {"timezone": "EST"}


def test_sqlite_urls_are_left_as_they_are() -> None:
    engine_url, connect_args = async_connection("sqlite:///data/billing.db")
    assert engine_url.drivername == "sqlite+aiosqlite"
    assert connect_args == {}
    assert sync_url("sqlite+aiosqlite:///data/billing.db").drivername == "sqlite+pysqlite"


@pytest.mark.parametrize("url", ["mysql://kiln@db/billing", "oracle://kiln@db/billing"])
def test_other_databases_are_refused_by_name(url: str) -> None:
    with pytest.raises(UnsupportedDatabase, match="SQLite and PostgreSQL only"):
        sync_url(url)
    with pytest.raises(UnsupportedDatabase):
        async_connection(url)
