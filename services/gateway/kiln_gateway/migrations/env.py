"""Alembic's entry: migrate the connection `kiln_gateway.migrate` hands over, or (from the
`alembic` command line) the database of `sqlalchemy.url` / KILN_DATABASE_URL."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from kiln_gateway.tables import Base
from kiln_runtime.db import make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters a table by copying it; Alembic's batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from kiln_gateway.config import GatewaySettings

    return GatewaySettings().database_url


async def run_on_engine(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


given: Connection | None = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
elif context.is_offline_mode():
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_on_engine(database_url()))
