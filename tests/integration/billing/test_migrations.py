"""Billing's schema comes from its Alembic migrations, on SQLite and PostgreSQL: they build
exactly the models' tables (inbox and outbox included), convert a walking-skeleton database's
single-entry rows into balanced bookings, and go down and up again without losing a credit."""

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from kiln_billing.migrate import current_revision, downgrade_connection, upgrade_database
from kiln_billing.tables import Base
from kiln_billing.verify import verify_ledger_async
from kiln_runtime.db import make_engine, make_session_factory
from tests.integration.billing.billing_events import (
    ended,
    grant,
    new_account,
    new_job,
    processor,
    submitted,
)
from tests.integration.schema_support import schema_differences

pytestmark = pytest.mark.integration


LEGACY_ENTRY_COLUMNS = (
    "account_id",
    "entry_key",
    "kind",
    "job_id",
    "amount_millicredits",
    "sandbox",
)


async def test_the_migrations_build_exactly_the_models_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade_database(engine)
        await upgrade_database(engine)  # a second start finds nothing to do
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == "0004"
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            tables = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert {"inbox", "outbox", "ledger_transactions", "ledger_postings"} <= set(tables)
    finally:
        await engine.dispose()


async def test_a_walking_skeleton_database_is_converted_to_double_entry(
    database_url: str,
) -> None:
    """A database that the skeleton made with create_all (no alembic_version), holding
    single-entry rows, is stamped at 0001 and upgraded; its ledger then verifies."""
    engine = make_engine(database_url)
    try:
        await upgrade_database(engine, "0001")
        now = datetime.now(UTC)
        entries = sa.table(
            "ledger_entries",
            *(sa.column(c) for c in ("account_id", "entry_key", "kind", "job_id")),
            sa.column("amount_millicredits", sa.BigInteger),
            sa.column("sandbox", sa.Boolean),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        rows = [
            ("acct_a", "grant:g1", "grant", None, 20_000, False),
            ("acct_a", "grant:g2", "grant", None, -2_000, False),
            ("acct_a", "reserve:job_1", "reserve", "job_1", 5_000, False),
            ("acct_a", "capture:job_1", "capture", "job_1", 5_000, False),
            ("acct_a", "reserve:job_2", "reserve", "job_2", 5_000, False),
            ("acct_a", "release:job_2", "release", "job_2", 5_000, False),
            ("acct_a", "reserve:job_3", "reserve", "job_3", 2_000, False),
            ("acct_a", "reserve:job_s", "reserve", "job_s", 0, True),
            ("acct_a", "capture:job_s", "capture", "job_s", 0, True),
        ]
        reservations = sa.table(
            "reservations",
            *(sa.column(c) for c in ("job_id", "account_id", "status")),
            sa.column("amount_millicredits", sa.BigInteger),
            sa.column("sandbox", sa.Boolean),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        async with engine.begin() as connection:
            await connection.execute(sa.text("DROP TABLE alembic_version"))  # as create_all did
            await connection.execute(
                entries.insert(),
                [
                    {**dict(zip(LEGACY_ENTRY_COLUMNS, r, strict=True)), "created_at": now}
                    for r in rows
                ],
            )
            await connection.execute(
                reservations.insert(),
                [
                    {
                        "job_id": job,
                        "account_id": "acct_a",
                        "status": status,
                        "amount_millicredits": amount,
                        "sandbox": job == "job_s",
                        "created_at": now,
                    }
                    for job, status, amount in (
                        ("job_1", "captured", 5_000),
                        ("job_2", "released", 5_000),
                        ("job_3", "reserved", 2_000),
                        ("job_s", "captured", 0),
                        ("job_4", "rejected", 0),
                    )
                ],
            )
            await connection.execute(
                sa.text(
                    "INSERT INTO account_balances (account_id, granted_millicredits, "
                    "available_millicredits, reserved_millicredits, captured_millicredits) "
                    "VALUES ('acct_a', 18000, 11000, 2000, 5000)"
                )
            )
        await upgrade_database(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == "0004"
            assert await connection.run_sync(schema_differences, Base.metadata) == []
        report = await verify_ledger_async(database_url)
        assert report.ok, report.render()
        assert report.totals == {
            "granted": 18_000,
            "available": 11_000,
            "reserved": 2_000,
            "spent": 5_000,
        }
        assert report.bookings == 7  # two grants, three reservations, a capture, a release
        assert report.jobs == {
            "live": {"captured": 1, "rejected": 1, "released": 1, "reserved": 1},
            "sandbox": {"captured": 1},
        }
        # The converted ledger goes on working: job_3 completes.
        await processor(make_session_factory(engine)).process(
            ended("job.completed", "acct_a", "job_3")
        )
        report = await verify_ledger_async(database_url)
        assert report.ok and report.totals["spent"] == 7_000
    finally:
        await engine.dispose()


async def test_down_to_the_skeleton_and_up_again_keeps_every_credit(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade_database(engine)
        billing = processor(make_session_factory(engine))
        account, done, held = new_account(), new_job(), new_job()
        await billing.process(grant(account, 30_000))
        await billing.process(ended("job.completed", account, done))  # ends before submission
        await billing.process(submitted(account, done))  # charged at once
        await billing.process(submitted(account, held))
        before = await verify_ledger_async(database_url)
        assert before.ok, before.render()
        async with engine.begin() as connection:
            await connection.run_sync(downgrade_connection, "0001")
        await upgrade_database(engine)
        after = await verify_ledger_async(database_url)
        assert after.ok, after.render()
        assert (
            after.totals
            == before.totals
            == {
                "granted": 30_000,
                "available": 20_000,
                "reserved": 5_000,
                "spent": 5_000,
            }
        )
    finally:
        await engine.dispose()
