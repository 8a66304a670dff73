"""Ids of the gateway's rows: a kind prefix and 32 hex digits (`job_…`, `key_…`, `we_…`)."""

import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
