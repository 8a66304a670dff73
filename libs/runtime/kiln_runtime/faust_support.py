"""Running a consuming service as a faust worker (billing, scheduler, notifier): one agent
feeds the service's EventProcessor; faust's web server serves /healthz, /readyz, /metrics."""

import logging
from collections.abc import Callable, Mapping

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kiln_contracts import Event
from kiln_runtime.consuming import EventProcessor, Handler
from kiln_runtime.health import readiness_body
from kiln_runtime.service import ServiceRuntime

log = logging.getLogger(__name__)


def make_faust_app(runtime: ServiceRuntime) -> faust.App:
    settings = runtime.settings
    # faust makes its datadir with a plain mkdir, so its parent must exist first.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.service_name,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        autodiscover=False,
        datadir=str(settings.data_dir / f"faust-{settings.service_name}"),
        web_enabled=True,
        web_bind=settings.http_host,
        web_host=settings.http_host,
        web_port=settings.http_port,
        # Topics come from the registry (proto/), created before any service starts.
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_s,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_s,
    )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_runtime(_app: faust.App, **_kwargs: object) -> None:
        await runtime.stop()

    _ = stop_runtime
    return app


def attach_processor(
    app: faust.App,
    runtime: ServiceRuntime,
    handlers: Mapping[str, Handler],
    *,
    on_commit: Callable[[Event], None] | None = None,
) -> None:
    """Start the runtime when the worker starts, then feed every event to the processor.

    After each event's transaction commits, the outbox relay is woken, then `on_commit` (say,
    a loop that acts on what the handler wrote, so that it need not wait for its next poll).

    Faust acknowledges an event when the agent moves past it and commits acknowledged offsets,
    so an offset is committed only after the event's database transaction committed.
    """
    processor_holder: list[EventProcessor] = []

    def committed(event: Event) -> None:
        runtime.relay.wake()
        if on_commit is not None:
            on_commit(event)

    @app.task  # type: ignore[untyped-decorator]
    async def start_runtime() -> None:
        await runtime.start()
        processor_holder.append(
            EventProcessor(
                runtime.sessions,
                runtime.tables,
                consumer=runtime.settings.service_name,
                handlers=handlers,
                on_commit=committed,
            )
        )
        log.info("%s runtime started", runtime.settings.service_name)

    topic = app.topic(*sorted(handlers), key_type=bytes, value_type=bytes)

    @app.agent(topic, name=f"{runtime.settings.service_name}-events")
    async def consume(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await runtime.started.wait()
            value = event.value
            if isinstance(value, bytes):
                await processor_holder[0].process_raw(value, topic=event.message.topic)

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            if runtime.readiness is None:
                return self.json(readiness_body(False, {"started": False}), status=503)
            ready, checks = await runtime.readiness.report()
            return self.json(readiness_body(ready, checks), status=200 if ready else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type; as a header it goes through.
            return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    _ = (consume, Healthz, Readyz, Metrics)


def run_worker(app: faust.App, loglevel: str = "info") -> None:
    worker = faust.Worker(app, loglevel=loglevel.lower())
    worker.execute_from_commandline()
