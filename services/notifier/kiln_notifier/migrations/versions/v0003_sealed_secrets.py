"""Endpoints' signing secrets sealed with the operator's keyring (KILN_SECRETS_KEYS,
kiln_crypto.sealed_secrets): `endpoints.sealed_secret` takes the secrets that `endpoints.secret`
held in clear, which is emptied (kept, empty, for one release: tables.py says why).

The keyring comes from the process that runs the migration (the notifier at start, with its
settings) or, from `python -m kiln_notifier.migrate` and Alembic's command line, from
KILN_SECRETS_KEYS; it is needed only when there is a secret to seal (or, going down, to open).

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiln_crypto import SecretsKeyring
from kiln_runtime.migration_ops import lazy_keyring, move_values

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_endpoints = sa.table(
    "endpoints",
    sa.column("endpoint_id", sa.String),
    sa.column("secret", sa.String),
    sa.column("sealed_secret", sa.Text),
)


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("sealed_secret", sa.Text(), nullable=True))
    keyring = lazy_keyring(SecretsKeyring.from_setting)
    move_values(_endpoints, "endpoint_id", "secret", "sealed_secret", lambda s: keyring().seal(s))


def downgrade() -> None:
    keyring = lazy_keyring(SecretsKeyring.from_setting)
    move_values(_endpoints, "endpoint_id", "sealed_secret", "secret", lambda s: keyring().open(s))
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("sealed_secret")
