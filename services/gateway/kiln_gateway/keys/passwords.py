"""Account passwords: argon2id hashes (argon2-cffi). A hash made with older parameters is
upgraded at the next successful login. A wrong password and an unknown email take about the
same time: an unknown email is checked against a dummy hash."""

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
_dummy_hash: str | None = None


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash`. With no hash (an unknown email) the
    password is checked against a dummy hash anyway, so that both take the same time."""
    global _dummy_hash
    if password_hash is None:
        if _dummy_hash is None:
            _dummy_hash = await hash_password("kiln: no such account")
        await asyncio.to_thread(_verify, _dummy_hash, password)
        return False
    return await asyncio.to_thread(_verify, password_hash, password)


def normalize_email(email: str) -> str:
    return email.strip().lower()
