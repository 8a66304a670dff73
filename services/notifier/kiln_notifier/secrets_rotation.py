"""`python -m kiln_notifier.secrets_rotation`: every endpoint secret the notifier stores, sealed
again with the first key of KILN_SECRETS_KEYS (docs/deploy.md, "Rotating the secrets key"),
beside the running service.

It seals again what an older key of the list sealed, and seals a secret that a notifier of the
release before sealed secrets stored in clear (during a rolling upgrade). What the first key
seals already is left alone: a second run changes nothing. Exit status 1 when some secret no
key opens (the endpoint ids are printed; no secret is)."""

from __future__ import annotations

from sqlalchemy import Engine

from kiln_crypto import SecretsKeyring
from kiln_notifier.tables import make_tables
from kiln_runtime.sealed_columns import RotationReport, reseal_column, run_rotation


def rotate_secrets(engine: Engine, keyring: SecretsKeyring) -> RotationReport:
    return reseal_column(
        engine,
        make_tables().endpoints,
        id_column="endpoint_id",
        sealed_column="sealed_secret",
        legacy_column="secret",
        keyring=keyring,
    )


def main() -> int:
    from kiln_notifier.config import NotifierSettings

    settings = NotifierSettings()
    return run_rotation(
        "kiln_notifier.secrets_rotation",
        settings.database_url,
        settings.secrets_keys.get_secret_value(),
        SecretsKeyring.from_setting,
        lambda engine, keyring: {"endpoints' secrets": rotate_secrets(engine, keyring)},
    )


if __name__ == "__main__":
    raise SystemExit(main())
