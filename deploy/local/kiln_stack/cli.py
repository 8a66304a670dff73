"""The command line of deploy/local/stack.py: up, down, status, install, scale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kiln_stack.components import instance_counts, parse_instances
from kiln_stack.errors import StackError
from kiln_stack.layout import DATABASES
from kiln_stack.local_stack import LocalStack
from kiln_stack.prometheus import LocalPrometheus


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack.py", description="Kiln's local stack (Kafka, Triton, the five services)."
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "status", "install", "scale"),
        help="up: install, start and bootstrap; down: stop; status: what runs; "
        "install: only the Debian packages and the Kafka jars; "
        "scale: change the instance counts of a running stack (--instances)",
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="up: also run a Prometheus on :9090 that scrapes every component (prometheus.py)",
    )
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default=None,
        help="up: where the services keep their state: sqlite (files in data/, the default) "
        "or postgresql (a cluster of the stack's own; also KILN_STACK_DATABASE)",
    )
    parser.add_argument(
        "--instances",
        default="",
        metavar="SERVICE=N,...",
        help="instances of services, e.g. inference=2,billing=2 (up and scale; default 1 each)",
    )
    args = parser.parse_args(argv)
    try:
        stack = LocalStack.from_env()
        if args.database is not None:
            stack.database = args.database
        counts = parse_instances(args.instances)
        if args.command in ("up", "scale"):
            stack.instances = instance_counts({**stack.instances, **counts})
        elif counts:
            raise StackError("--instances goes with up or scale")
        if args.command == "up":
            stack.up()
            if args.prometheus:
                prometheus = LocalPrometheus(stack)
                prometheus.start()
                print(f"  Prometheus:    {prometheus.url}")
        elif args.command == "scale":
            if not counts:
                raise StackError("scale needs --instances SERVICE=N,...")
            for name, count in counts.items():
                stack.scale(name, count)
        elif args.command == "down":
            if LocalPrometheus(stack).stop():
                print("prometheus: stopped")
            stack.down()
        elif args.command == "install":
            done = stack.install()
            print(f"installed: {', '.join(done)}" if done else "install: nothing was missing")
        else:
            for item in stack.status():
                state = "stopped"
                if item.running:
                    state = f"running (pid {item.pid}), {'ready' if item.ready else 'not ready'}"
                print(f"{item.name:<12} {state:<36} {item.address}")
            if stack.demo_env_file.exists():
                print(f"demo account: {stack.demo_env_file}")
    except StackError as exc:
        print(f"stack.py {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
