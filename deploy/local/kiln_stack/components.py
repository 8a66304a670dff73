"""The components of a stack (kafka, triton, postgres, the services) and service instance names."""

from __future__ import annotations

from collections.abc import Mapping

from kiln_stack.errors import StackError

SERVICES: tuple[str, ...] = ("gateway", "billing", "scheduler", "inference", "notifier")
KAFKA = "kafka"
POSTGRES = "postgres"
TRITON = "triton"


def instance_name(service: str, instance: int = 1) -> str:
    """The component name of one instance of a service: `billing`, `billing-2`, ..."""
    if service not in SERVICES:
        raise StackError(f"unknown service {service!r} (one of {', '.join(SERVICES)})")
    if instance < 1:
        raise StackError(f"{service}: instance numbers start at 1 (not {instance})")
    return service if instance == 1 else f"{service}-{instance}"


def split_instance(component: str) -> tuple[str, int]:
    """(service, instance number) of a component name: `billing-2` -> ("billing", 2),
    `billing` -> ("billing", 1); anything else (kafka, triton) -> (component, 1)."""
    base, sep, number = component.rpartition("-")
    if sep and base in SERVICES and number.isdigit() and int(number) >= 2:
        return base, int(number)
    return component, 1


def instance_counts(instances: Mapping[str, int] | None = None) -> dict[str, int]:
    """How many instances of each service: 1 unless `instances` says otherwise (>= 1)."""
    counts = dict.fromkeys(SERVICES, 1)
    for name, count in (instances or {}).items():
        if name not in SERVICES:
            raise StackError(f"instances: unknown service {name!r} (one of {', '.join(SERVICES)})")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise StackError(f"instances: {name}={count!r} is not a count >= 1")
        counts[name] = count
    return counts


def parse_instances(spec: str) -> dict[str, int]:
    """`inference=2,billing=2` (commas or spaces between) -> {"inference": 2, "billing": 2}."""
    counts: dict[str, int] = {}
    for item in spec.replace(",", " ").split():
        name, sep, raw = item.partition("=")
        if not sep or not raw.strip().isdigit():
            raise StackError(f"instances: {item!r} is not SERVICE=COUNT")
        counts[name.strip()] = int(raw)
    instance_counts(counts)  # validates
    return counts
