"""Kiln's local stack: one Kafka broker (KRaft), a Triton server and the five services.

    uv run python deploy/local/stack.py up       # install what is missing, start, bootstrap demo
    uv run python deploy/local/stack.py down     # stop what `up` started (data is kept)
    uv run python deploy/local/stack.py status   # what runs
    uv run python deploy/local/stack.py install  # only the Debian packages and the Kafka jars

    uv run python deploy/local/stack.py up --database postgresql   # the services on PostgreSQL

    uv run python deploy/local/stack.py up --instances inference=2,billing=2
    uv run python deploy/local/stack.py scale --instances inference=4   # on a running stack

Several instances of a service: instance 1 is the service's usual process (`billing`:
run/billing.pid, logs/billing.log, its port of `StackPorts`); instance i >= 2 is `billing-<i>`
(run/billing-<i>.pid, logs/billing-<i>.log, a free port kept in run/billing-<i>.port). All
instances of a service are members of its Kafka consumer group; see `LocalStack.service_env` for
their databases.

Everything lives under one folder, `KILN_STACK_DIR` (default `<repo>/.kiln`):

    kafka/libs/        the broker's jars (Maven Central, deploy/local/pom.xml)
    kafka/data/        the broker's log dirs (KRaft metadata and topics)
    kafka/*.properties generated from deploy/local/*.properties.in
    data/              the services' SQLite files; data/blobs/ their blobs
    postgres/          with `up --database postgresql`: the PostgreSQL cluster (postgres.py)
    logs/              one log per process
    run/               pidfiles (and the ports of extra service instances)
    secrets.env        the admin token, the signing keys, the database password (made once)
    stack.env          what the last `up` ran on (sqlite or postgresql)
    demo.env           the demo account (`set -a; . .kiln/demo.env; set +a`)

The code is the package `kiln_stack/` next to this file (one module per concern; its
`__init__.py` lists them); this file is its command line. Tests use the
same code through `tests/stack_support.py`: `LocalStack(tmp_dir, StackPorts.free())` starts a
whole stack of its own in a temporary folder on free ports.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python deploy/local/stack.py` puts this folder on sys.path; loading this file by its path
# (importlib) does not.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from kiln_stack.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
