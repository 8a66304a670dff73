"""Sealing again, with the first key of the operator's keyring, the secrets a service stores
sealed (kiln_crypto.sealed_secrets): what each service's `secrets_rotation` command runs
(docs/deploy.md, "Rotating the secrets key").

A sealed column has, beside it, the legacy column that held the secret in clear before; a value
there (written by a replica of the previous release during a rolling upgrade) is sealed into the
sealed column and the legacy one emptied. A secret the first key already seals is left alone,
so a second run changes nothing. The table is walked in pages, each in a short transaction of
its own, so the service keeps writing meanwhile (on SQLite too)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine, Table, select, update

from kiln_runtime.db import WRITE_INTENT, make_sync_engine

PAGE_SIZE = 200
K = TypeVar("K")


class Keyring(Protocol):
    """What this needs of kiln_crypto.SecretsKeyring (kiln_runtime does not depend on it)."""

    def seal(self, secret: str) -> str: ...

    def reseal(self, sealed: str) -> str: ...

    def sealed_with_first_key(self, sealed: str) -> bool: ...


@dataclass
class RotationReport:
    """What a run found and did, by count; the ids of the rows no key opens."""

    current: int = 0  # the first key seals them already
    resealed: int = 0  # an older key sealed them; the first key does now
    sealed_from_clear: int = 0  # held in clear in the legacy column; sealed now
    unreadable: list[str] = field(default_factory=list)

    def add(self, other: RotationReport) -> None:
        self.current += other.current
        self.resealed += other.resealed
        self.sealed_from_clear += other.sealed_from_clear
        self.unreadable += other.unreadable

    def summary(self) -> str:
        text = (
            f"{self.current} already sealed with the first key, {self.resealed} sealed again, "
            f"{self.sealed_from_clear} sealed from clear"
        )
        if self.unreadable:
            text += f"; {len(self.unreadable)} that no key opens: {', '.join(self.unreadable)}"
        return text


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        connection.info[WRITE_INTENT] = True
        with connection.begin():
            yield connection


def reseal_column(
    engine: Engine,
    table: Table,
    *,
    id_column: str,
    sealed_column: str,
    legacy_column: str,
    keyring: Keyring,
    version_column: str | None = None,
) -> RotationReport:
    """Every row of `table`: its sealed secret sealed again with the first key (unless that
    key seals it already), or the clear one of `legacy_column` sealed (and emptied there).

    `version_column`, when the table's writers judge a row by a version (an ORM version
    column), is moved with every row written, so a change that read the row before the
    rotation is made again on the resealed row instead of announcing the secret it read."""
    ids, sealed_of, legacy_of = table.c[id_column], table.c[sealed_column], table.c[legacy_column]
    report = RotationReport()
    after: str | None = None
    while True:
        with write_transaction(engine) as connection:
            query = select(ids, sealed_of, legacy_of).order_by(ids).limit(PAGE_SIZE)
            if after is not None:
                query = query.where(ids > after)
            rows = connection.execute(query).all()
            for row_id, sealed, legacy in rows:
                values: dict[str, str] = {}
                if legacy:
                    # Written by a replica of the release before sealed secrets.
                    values[legacy_column] = ""
                    if not sealed:
                        values[sealed_column] = keyring.seal(legacy)
                        report.sealed_from_clear += 1
                if sealed:
                    if keyring.sealed_with_first_key(sealed):
                        report.current += 1
                    else:
                        try:
                            values[sealed_column] = keyring.reseal(sealed)
                            report.resealed += 1
                        except ValueError:  # kiln_crypto.SealedSecretError: no key opens it
                            report.unreadable.append(str(row_id))
                if values:
                    moved: dict[str, object] = dict(values)
                    if version_column is not None:
                        moved[version_column] = table.c[version_column] + 1
                    connection.execute(update(table).where(ids == row_id).values(moved))
        if len(rows) < PAGE_SIZE:
            return report
        after = rows[-1][0]


def run_rotation(
    program: str,
    database_url: str,
    keys_setting: str,
    open_keyring: Callable[[str], K],
    rotate: Callable[[Engine, K], Mapping[str, RotationReport]],
) -> int:
    """A service's `secrets_rotation` command: open the keyring (`open_keyring` raises
    ValueError for a bad KILN_SECRETS_KEYS), re-seal, print each place's report. Exit status 2
    for a bad keyring, 1 when some secret no key opens, else 0."""
    try:
        keyring = open_keyring(keys_setting)
    except ValueError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 2
    engine = make_sync_engine(database_url)
    try:
        reports = rotate(engine, keyring)
    finally:
        engine.dispose()
    for place, report in reports.items():
        print(f"{place}: {report.summary()}")
    return 1 if any(report.unreadable for report in reports.values()) else 0
