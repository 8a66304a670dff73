"""The operator's health view: each component's readiness and the pipeline's consumer groups.

- The gateway answering this page reports its own readiness checks (database, Kafka, consumer).
- Every component named in `KILN_CONSOLE_HEALTH_URLS` (the other services' `/readyz`, Triton's
  `/v2/health/ready`; the local stack sets them) is asked, with a short timeout.
- Kafka itself says which services' consumer groups exist, how far behind each is (lag: the
  messages of its partitions not yet consumed, from its committed offsets), and how many dead
  letters the dead-letter topic holds (docs/architecture.md, "Dead letters"). Whether a
  service's consumer runs is in its own readiness (`consumer`) above: aiokafka 0.14 cannot
  decode this broker's DescribeGroups answers, so group members are not asked.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kiln_gateway.state import GatewayState

PROBE_TIMEOUT_S = 3.0
KAFKA_TIMEOUT_S = 8.0
SERVICE_GROUPS = ("gateway", "billing", "scheduler", "inference", "notifier")
DEAD_LETTER_TOPIC = "kiln.dead_letters"


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    status: str  # ready | unavailable | unreachable
    checks: dict[str, bool] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class GroupHealth:
    group: str
    known: bool  # the broker has the group (its service consumed and committed once)
    partitions: int  # partitions it has committed offsets for
    lag: int | None


@dataclass(frozen=True)
class KafkaHealth:
    reachable: bool
    groups: list[GroupHealth] = field(default_factory=list)
    dead_letters: int | None = None
    detail: str = ""


async def _probe(client: httpx.AsyncClient, name: str, url: str) -> ComponentHealth:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return ComponentHealth(name, "unreachable", detail=type(exc).__name__)
    checks: dict[str, bool] = {}
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("checks"), dict):
            checks = {str(k): bool(v) for k, v in body["checks"].items()}
    status = "ready" if response.status_code == 200 else "unavailable"
    return ComponentHealth(name, status, checks, detail=f"HTTP {response.status_code}")


async def component_health(state: GatewayState) -> list[ComponentHealth]:
    own: ComponentHealth
    readiness = state.runtime.readiness
    if readiness is None:
        own = ComponentHealth("gateway (this replica)", "unavailable", detail="starting")
    else:
        ready, checks = await readiness.report()
        own = ComponentHealth("gateway (this replica)", "ready" if ready else "unavailable", checks)
    urls = state.settings.console_health_urls
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, follow_redirects=False) as client:
        others = await asyncio.gather(*(_probe(client, n, u) for n, u in urls.items()))
    return [own, *others]


async def kafka_health(state: GatewayState) -> KafkaHealth:
    bootstrap = state.settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await admin.start()
            await consumer.start()
            known = {group for group, *_ in await admin.list_consumer_groups()}
            groups = []
            for name in SERVICE_GROUPS:
                committed = await admin.list_consumer_group_offsets(name) if name in known else {}
                lag: int | None = None
                if committed:
                    ends = await consumer.end_offsets(list(committed))
                    lag = sum(
                        max(ends[tp] - meta.offset, 0)
                        for tp, meta in committed.items()
                        if meta.offset >= 0
                    )
                groups.append(GroupHealth(name, name in known, len(committed), lag))
            dead = None
            partitions = None
            if DEAD_LETTER_TOPIC in await consumer.topics():  # also loads its metadata
                partitions = consumer.partitions_for_topic(DEAD_LETTER_TOPIC)
            if partitions:
                tps = [TopicPartition(DEAD_LETTER_TOPIC, p) for p in partitions]
                ends = await consumer.end_offsets(tps)
                starts = await consumer.beginning_offsets(tps)
                dead = sum(ends[tp] - starts[tp] for tp in tps)
            return KafkaHealth(True, groups, dead)
    except Exception as exc:  # the page shows why; the broker being away is what it is for
        return KafkaHealth(False, detail=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()
