"""The topic registry names, for every event type, the services that consume it: exactly the
types each service's handlers take (a stale list would mislead operators, and the Kubernetes
autoscalers that read the same registry)."""

from collections import defaultdict
from datetime import timedelta

from kiln_billing.handlers import make_handlers as billing_handlers
from kiln_contracts import TOPICS
from kiln_crypto import SecretsKeyring, new_secrets_key
from kiln_gateway.handlers import make_handlers as gateway_handlers
from kiln_inference.handlers import Inference
from kiln_notifier.handlers import Notifier
from kiln_notifier.tables import make_tables
from kiln_runtime.catalog import load_catalog
from kiln_runtime.job_object import FileLinks
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.handlers import Scheduler


def consumed_by_service() -> dict[str, set[str]]:
    catalog = load_catalog()
    links = FileLinks(public_url="http://x", signing_key="k" * 32, ttl_s=60)
    return {
        "billing": set(billing_handlers(catalog).event_types),
        "scheduler": set(Scheduler(catalog, SchedulerSettings()).handlers().event_types),
        "inference": set(Inference("w").handlers().event_types),
        "notifier": set(
            Notifier(
                make_tables(),
                links,
                lease=timedelta(seconds=60),
                keyring=SecretsKeyring([new_secrets_key()]),
            )
            .handlers()
            .event_types
        ),
        "gateway": set(gateway_handlers().event_types),
    }


def test_the_registry_names_exactly_the_consumers_of_each_event_type() -> None:
    consumers: dict[str, set[str]] = defaultdict(set)
    for service, event_types in consumed_by_service().items():
        for event_type in event_types:
            consumers[event_type].add(service)
    registered = {name: set(spec.consumers) for name, spec in TOPICS.items()}
    assert set(consumers) <= set(registered), "a service consumes a type the registry lacks"
    assert {name: consumers.get(name, set()) for name in registered} == registered
