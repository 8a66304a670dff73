"""The notifier's schema through Alembic (`migrations/`): the runtime runs
`upgrade_connection` at start, before anything else touches the database."""

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from kiln_runtime import migrations

if TYPE_CHECKING:
    from kiln_crypto import SecretsKeyring

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A database the notifier made with create_all before it had migrations.
BASELINE = ("0001", "deliveries")
MIGRATION_LOCK_KEY = 0x6B696C6E_0006  # "kiln", the notifier
# The alembic config attribute under which a migration finds the operator's keyring (0003 seals
# the endpoints' secrets with it); without it, migrations read KILN_SECRETS_KEYS themselves.
KEYRING_ATTRIBUTE = "secrets_keyring"


def upgrade_connection(
    connection: Connection, revision: str = "head", *, keyring: "SecretsKeyring | None" = None
) -> None:
    migrations.upgrade(
        connection,
        MIGRATIONS_DIR,
        lock_key=MIGRATION_LOCK_KEY,
        revision=revision,
        baseline=BASELINE,
        attributes={KEYRING_ATTRIBUTE: keyring} if keyring is not None else None,
    )


def downgrade_connection(
    connection: Connection, revision: str, *, keyring: "SecretsKeyring | None" = None
) -> None:
    migrations.downgrade(
        connection,
        MIGRATIONS_DIR,
        revision,
        attributes={KEYRING_ATTRIBUTE: keyring} if keyring is not None else None,
    )


def main() -> int:
    """`python -m kiln_notifier.migrate`: the newest schema on KILN_DATABASE_URL."""
    from kiln_notifier.config import NotifierSettings
    from kiln_runtime.migrations import command_line

    return command_line(upgrade_connection, NotifierSettings().database_url)


if __name__ == "__main__":
    raise SystemExit(main())
