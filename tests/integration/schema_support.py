"""What a service's migrations built, against its models: the one check every service's
migration tests make."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection


def schema_differences(connection: Connection, metadata: MetaData) -> list[object]:
    """Alembic's differences between the database's schema and `metadata` (types compared);
    empty when the migrations build exactly the models' tables."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))
