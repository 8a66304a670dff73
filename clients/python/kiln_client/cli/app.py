"""The `kiln` commands. Every command prints JSON when its output is piped (or with `--json`)
and tables on a terminal; errors go to stderr with their code and request id, exit code 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from kiln_client import __version__
from kiln_client.cli.inputs import InputError, parse_pairs
from kiln_client.cli.listen import Forwarded, Forwarder, new_secret
from kiln_client.cli.output import Column, Output
from kiln_client.cli.progress import JobProgress, describe
from kiln_client.cli.session_store import forget_session, load_session, save_session
from kiln_client.client import Kiln
from kiln_client.decryption import decrypt_file
from kiln_client.errors import (
    APIConnectionError,
    APIError,
    DecryptionError,
    JobError,
    KilnError,
    MissingCredentials,
    WebhookVerificationError,
)
from kiln_client.models import Job
from kiln_client.signatures import verify_webhook

app = typer.Typer(
    name="kiln",
    help="Kiln from the command line: run jobs, follow them, download and decrypt results, "
    "manage keys and webhooks, and forward events to a local webhook handler.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
jobs_app = typer.Typer(help="List, inspect, follow and cancel jobs.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (needs `kiln login`).", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook endpoints and deliveries.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")


@dataclass
class State:
    api_key: str | None = None
    base_url: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    output: Output = field(default_factory=lambda: Output.detect(None))
    _kiln: Kiln | None = None

    def kiln(self) -> Kiln:
        if self._kiln is None:
            self._kiln = Kiln(
                self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        return self._kiln


def state(ctx: typer.Context) -> State:
    found = ctx.find_object(State)
    if found is None:
        found = State()
        ctx.obj = found
    return found


def fail(message: str) -> NoReturn:
    typer.echo(f"kiln: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def errors_reported() -> Iterator[None]:
    """Every SDK error as one line on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except JobError as exc:
        if not sys.stdout.isatty():
            Output.detect(True).json(exc.job)
        fail(str(exc))
    except (APIError, APIConnectionError, MissingCredentials) as exc:
        fail(str(exc))
    except (DecryptionError, WebhookVerificationError, InputError) as exc:
        fail(str(exc))
    except KilnError as exc:
        fail(str(exc))


@app.callback()
def main(
    ctx: typer.Context,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="KILN_API_KEY", help="sk_live_… or sk_test_…", show_default=False
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", envvar="KILN_API_URL", help="The API, e.g. http://127.0.0.1:8000/api/v1"
        ),
    ] = None,
    json_output: Annotated[
        bool | None,
        typer.Option("--json/--table", help="JSON or tables (default: JSON when piped)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds each HTTP attempt may take.")
    ] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries of a failed request.")] = None,
) -> None:
    ctx.obj = State(api_key, base_url, timeout, max_retries, Output.detect(json_output))


@app.command()
def version() -> None:
    """The client's version."""
    typer.echo(__version__)


# ------------------------------------------------------------------------------ columns

JOB_COLUMNS: list[Column] = [
    ("id", lambda j: j.id),
    ("model", lambda j: j.model),
    ("status", describe),
    ("progress", lambda j: j.progress),
    ("cost", lambda j: j.cost),
    ("created", lambda j: j.created_at),
]
JOB_FIELDS: list[Column] = [
    ("id", lambda j: j.id),
    ("model", lambda j: j.model),
    ("status", describe),
    ("progress", lambda j: j.progress),
    ("cost", lambda j: j.cost),
    ("sandbox", lambda j: j.sandbox),
    ("created", lambda j: j.created_at),
    ("started", lambda j: j.started_at),
    ("completed", lambda j: j.completed_at),
    ("input", lambda j: j.input),
    ("metadata", lambda j: j.metadata),
    ("error", lambda j: f"{j.error.code}: {j.error.message}" if j.error else None),
    (
        "result",
        lambda j: f"{j.result.content_type}, {j.result.size_bytes} bytes" if j.result else None,
    ),
]

InputOption = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        help="An input: key=text, key:=json (seed:=7), or @file.json for a whole object.",
        show_default=False,
    ),
]


def job_input(pairs: list[str] | None) -> dict[str, Any]:
    with errors_reported():
        return parse_pairs(pairs or [])


# ------------------------------------------------------------------------------ run & jobs


def follow(out: Output, kiln: Kiln, job: Job, timeout: float | None, cancel: bool) -> Job:
    with JobProgress(out.err, job.id) as progress:
        progress.update(job)
        return kiln.jobs.wait(
            job.id,
            timeout=timeout,
            on_update=progress.update,
            cancel_on_timeout=cancel,
            first=job,
        )


def save_result(out: Output, job: Job, path: Path, secret: str | None) -> Path:
    if job.result is None:
        fail(f"job {job.id} has no result")
    saved = job.result.save(path, secret=secret)
    out.note(f"saved {job.result.content_type} to {saved}")
    return saved


@app.command()
def run(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="A model id, e.g. kiln/prompt-to-image.")],
    inputs: InputOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the decrypted result here.")
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Also POST the outcome here.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value, kept with the job.")
    ] = None,
    sandbox_outcome: Annotated[
        str | None,
        typer.Option(help="Sandbox keys: completed, failed or timeout, to test error paths."),
    ] = None,
    sandbox_delay: Annotated[float | None, typer.Option(help="Sandbox keys: seconds.")] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--wait-timeout", help="Give up waiting after this many seconds."),
    ] = None,
    cancel_on_timeout: Annotated[
        bool, typer.Option(help="Cancel the job when the wait times out.")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Submit and print the job.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Default: a new one.")] = None,
) -> None:
    """Run a job: submit it, show its progress, write the decrypted result with -o."""
    st = state(ctx)
    out = st.output
    body_input = job_input(inputs)
    sandbox: dict[str, Any] | None = None
    if sandbox_outcome is not None or sandbox_delay is not None:
        sandbox = {"outcome": sandbox_outcome or "completed"}
        if sandbox_delay is not None:
            sandbox["delay_s"] = sandbox_delay
    with errors_reported():
        kiln = st.kiln()
        job = kiln.jobs.create(
            model,
            body_input,
            webhook_url=webhook_url,
            metadata=parse_pairs(metadata or [], what="metadata") if metadata else None,
            sandbox=sandbox,
            idempotency_key=idempotency_key,
        )
        if not no_wait:
            job = follow(out, kiln, job, timeout, cancel_on_timeout)
            if output is not None:
                save_result(out, job, output, None)
        out.show(job, JOB_FIELDS)


@app.command()
def download(
    ctx: typer.Context,
    job_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write it.")],
    encrypted: Annotated[
        bool, typer.Option(help="Keep the blob encrypted (decrypt later with `kiln decrypt`).")
    ] = False,
    secret: Annotated[
        str | None,
        typer.Option(help="The secret of the key that ran the job (default: --api-key)."),
    ] = None,
) -> None:
    """Download a completed job's result, decrypted (or as the encrypted blob)."""
    st = state(ctx)
    with errors_reported():
        job = st.kiln().jobs.get(job_id)
        if job.result is None:
            fail(f"job {job_id} is {job.status}: no result")
        if encrypted:
            saved = job.result.save_encrypted(output)
            st.output.note(f"saved the encrypted blob to {saved}")
        else:
            save_result(st.output, job, output, secret)


@app.command()
def models(ctx: typer.Context, model_id: Annotated[str | None, typer.Argument()] = None) -> None:
    """The catalog, or one model with its input schema."""
    st = state(ctx)
    with errors_reported():
        if model_id is not None:
            st.output.show(st.kiln().models.get(model_id))
            return
        st.output.table(
            st.kiln().models.list(),
            [
                ("id", lambda m: m.id),
                ("kind", lambda m: m.kind),
                ("price", lambda m: m.price),
                ("content type", lambda m: m.content_type),
                ("name", lambda m: m.name),
            ],
        )


@app.command()
def quote(ctx: typer.Context, model: str, inputs: InputOption = None) -> None:
    """What a job would cost, without making it."""
    st = state(ctx)
    body_input = job_input(inputs)
    with errors_reported():
        st.output.show(st.kiln().jobs.quote(model, body_input))


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="One or a comma list.")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    created_after: Annotated[str | None, typer.Option(help="ISO timestamp.")] = None,
    created_before: Annotated[str | None, typer.Option(help="ISO timestamp.")] = None,
    sort: Annotated[str | None, typer.Option(help="created_at, -created_at, status, …")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 25,
) -> None:
    """Jobs, newest first."""
    st = state(ctx)
    with errors_reported():
        pager = st.kiln().jobs.list(
            status=status,
            model=model,
            created_after=created_after,
            created_before=created_before,
            sort=sort,
            per_page=min(limit, 100) if limit > 0 else 100,
            limit=limit or None,
        )
        st.output.table(list(pager), JOB_COLUMNS)


@jobs_app.command("count")
def jobs_count(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
) -> None:
    """How many jobs match."""
    st = state(ctx)
    with errors_reported():
        count = st.kiln().jobs.count(status=status, model=model)
        if st.output.json_mode:
            st.output.json({"count": count})
        else:
            typer.echo(count)


@jobs_app.command("get")
def jobs_get(ctx: typer.Context, job_id: str) -> None:
    """One job."""
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().jobs.get(job_id), JOB_FIELDS)


@jobs_app.command("watch")
def jobs_watch(
    ctx: typer.Context,
    job_id: str,
    timeout: Annotated[float | None, typer.Option("--wait-timeout")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Follow a job until it ends (progress on stderr); -o saves its result."""
    st = state(ctx)
    with errors_reported():
        kiln = st.kiln()
        job = follow(st.output, kiln, kiln.jobs.get(job_id), timeout, False)
        if output is not None:
            save_result(st.output, job, output, None)
        st.output.show(job, JOB_FIELDS)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (refunded in full)."""
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().jobs.cancel(job_id), JOB_FIELDS)


# ------------------------------------------------------------------------------ usage, events


@app.command()
def usage(
    ctx: typer.Context,
    stats: Annotated[bool, typer.Option("--stats", help="Spend and counts over a range.")] = False,
    group_by: Annotated[str, typer.Option(help="day or model")] = "day",
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD.")] = None,
) -> None:
    """Balance, reserved credits, this month's spend and job counts (or --stats)."""
    st = state(ctx)
    with errors_reported():
        kiln = st.kiln()
        if not stats:
            st.output.show(kiln.usage.get())
            return
        result = kiln.usage.stats(group_by=group_by, start=start, end=end)
        if st.output.json_mode:
            st.output.json(result)
            return
        st.output.table(
            result.rows,
            [
                (group_by, lambda r: r.key),
                ("live jobs", lambda r: r.live.get("jobs")),
                ("live spent", lambda r: r.live.get("spent")),
                ("sandbox jobs", lambda r: r.sandbox.get("jobs")),
            ],
        )


@app.command()
def events(
    ctx: typer.Context,
    after: Annotated[str | None, typer.Option(help="Cursor: events after this one.")] = None,
    follow_feed: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting.")] = False,
) -> None:
    """The account's job events in order (JSON lines when piped)."""
    st = state(ctx)
    with errors_reported():
        for event in st.kiln().events.iter(after=after, follow=follow_feed):
            if st.output.json_mode:
                st.output.json(event, lines=True)
            else:
                st.output.out.print(
                    f"{event.id:>6}  {event.occurred_at:%Y-%m-%d %H:%M:%S}  "
                    f"{event.type:<20} {event.job_id or ''} {event.data.get('status', '')}",
                    markup=False,
                    highlight=False,
                )


# ------------------------------------------------------------------------------ sessions, keys


@app.command()
def login(
    ctx: typer.Context,
    email: Annotated[str, typer.Option(envvar="KILN_EMAIL", prompt=True)],
    password: Annotated[str, typer.Option(envvar="KILN_PASSWORD", prompt=True, hide_input=True)],
) -> None:
    """Open an account session for `kiln keys` (kept in ~/.config/kiln, mode 600)."""
    st = state(ctx)
    with errors_reported():
        kiln = st.kiln()
        token = kiln.login(email, password)
        path = save_session(kiln.base_url, email, token.token, token.expires_at)
    st.output.note(f"logged in as {email} until {token.expires_at} (session in {path})")


@app.command()
def logout() -> None:
    """Forget the saved account session."""
    typer.echo("logged out" if forget_session() else "no saved session", err=True)


def session_kiln(st: State) -> Kiln:
    kiln = st.kiln()
    if kiln.session_token is None:
        token = load_session(kiln.base_url)
        if token is None:
            fail("no account session: run `kiln login` (or set KILN_SESSION_TOKEN)")
        kiln._http.options = kiln._http.options.updated(session_token=token)
    return kiln


KEY_COLUMNS: list[Column] = [
    ("id", lambda k: k.id),
    ("name", lambda k: k.name),
    ("kind", lambda k: k.kind),
    ("prefix", lambda k: k.prefix),
    ("created", lambda k: k.created_at),
    ("last used", lambda k: k.last_used_at),
    ("revoked", lambda k: k.revoked_at),
]


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    all_keys: Annotated[bool, typer.Option("--all", help="Revoked too.")] = False,
) -> None:
    """The account's API keys (never their secrets)."""
    st = state(ctx)
    with errors_reported():
        st.output.table(list(session_kiln(st).keys.list(include_revoked=all_keys)), KEY_COLUMNS)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: str,
    sandbox: Annotated[bool, typer.Option("--sandbox", help="An sk_test_ key.")] = False,
) -> None:
    """Make a key; its secret is shown this once."""
    st = state(ctx)
    with errors_reported():
        st.output.show(session_kiln(st).keys.create(name, sandbox=sandbox))


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context, key_id: str) -> None:
    """Replace a key with a new one (new secret, shown once); the old one stops at once."""
    st = state(ctx)
    with errors_reported():
        st.output.show(session_kiln(st).keys.rotate(key_id))


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str) -> None:
    """Revoke a key: its next request is refused."""
    st = state(ctx)
    with errors_reported():
        st.output.show(session_kiln(st).keys.revoke(key_id))


# ------------------------------------------------------------------------------ webhooks

ENDPOINT_COLUMNS: list[Column] = [
    ("id", lambda e: e.id),
    ("url", lambda e: e.url),
    ("events", lambda e: ",".join(e.event_types) or "all"),
    ("status", lambda e: e.status),
    ("description", lambda e: e.description),
]
DELIVERY_COLUMNS: list[Column] = [
    ("id", lambda d: d.id),
    ("event", lambda d: d.event_type),
    ("job", lambda d: d.job_id),
    ("status", lambda d: d.status),
    ("attempts", lambda d: len(d.attempts)),
    ("last code", lambda d: d.attempts[-1].status_code if d.attempts else None),
    ("url", lambda d: d.url),
]


@webhooks_app.command("create")
def webhooks_create(
    ctx: typer.Context,
    url: str,
    event: Annotated[
        list[str] | None, typer.Option("--event", "-e", help="job.completed, job.failed, …")
    ] = None,
    description: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Add an endpoint; its signing secret is shown this once."""
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().webhooks.create(url, event_types=event, description=description))


@webhooks_app.command("list")
def webhooks_list(ctx: typer.Context) -> None:
    """The account's endpoints."""
    st = state(ctx)
    with errors_reported():
        st.output.table(list(st.kiln().webhooks.list()), ENDPOINT_COLUMNS)


@webhooks_app.command("get")
def webhooks_get(ctx: typer.Context, endpoint_id: str) -> None:
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().webhooks.get(endpoint_id))


@webhooks_app.command("update")
def webhooks_update(
    ctx: typer.Context,
    endpoint_id: str,
    url: Annotated[str | None, typer.Option()] = None,
    event: Annotated[list[str] | None, typer.Option("--event", "-e")] = None,
    description: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Change an endpoint (and enable it again)."""
    st = state(ctx)
    with errors_reported():
        st.output.show(
            st.kiln().webhooks.update(
                endpoint_id, url=url, event_types=event, description=description
            )
        )


@webhooks_app.command("delete")
def webhooks_delete(ctx: typer.Context, endpoint_id: str) -> None:
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().webhooks.delete(endpoint_id))


@webhooks_app.command("test")
def webhooks_test(ctx: typer.Context, endpoint_id: str) -> None:
    """Send a signed `webhook.test` event to an endpoint."""
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().webhooks.test(endpoint_id))


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Option()] = None,
    endpoint_id: Annotated[
        str | None, typer.Option(help="`default`: jobs' own webhook_url.")
    ] = None,
    status: Annotated[str | None, typer.Option(help="retrying, delivered, failed")] = None,
    limit: Annotated[int, typer.Option()] = 25,
) -> None:
    """The delivery log, newest first, with every attempt."""
    st = state(ctx)
    with errors_reported():
        pager = st.kiln().webhooks.deliveries.list(
            job_id=job_id, endpoint_id=endpoint_id, status=status, limit=limit or None
        )
        st.output.table(list(pager), DELIVERY_COLUMNS)


@webhooks_app.command("delivery")
def webhooks_delivery(ctx: typer.Context, delivery_id: str) -> None:
    """One delivery and its attempts."""
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().webhooks.deliveries.get(delivery_id))


@webhooks_app.command("redeliver")
def webhooks_redeliver(ctx: typer.Context, delivery_id: str) -> None:
    """Send a delivery again (same body, same webhook-id)."""
    st = state(ctx)
    with errors_reported():
        st.output.show(st.kiln().webhooks.deliveries.redeliver(delivery_id))


@webhooks_app.command("secret")
def webhooks_secret(ctx: typer.Context) -> None:
    """The account's default secret (signs jobs' own webhook_url deliveries)."""
    st = state(ctx)
    with errors_reported():
        secret = st.kiln().webhooks.default_secret()
        st.output.json({"secret": secret}) if st.output.json_mode else typer.echo(secret)


@webhooks_app.command("public-key")
def webhooks_public_key(ctx: typer.Context) -> None:
    """The platform's Ed25519 key for `v1a` signatures."""
    st = state(ctx)
    with errors_reported():
        key = st.kiln().webhooks.public_key()
        st.output.json({"public_key": key}) if st.output.json_mode else typer.echo(key)


# ------------------------------------------------------------------------------ decrypt, verify


def load_job_json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        data = data["data"]  # a whole API answer
    if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
        raise InputError("the job JSON has no result")
    return data


@app.command()
def decrypt(
    ctx: typer.Context,
    blob: Annotated[Path, typer.Argument(help="The downloaded (encrypted) blob.")],
    output: Annotated[Path, typer.Option("--output", "-o")],
    job: Annotated[str, typer.Option("--job", help="A job id, or a file with the job's JSON.")],
    secret: Annotated[
        str | None, typer.Option(help="The API secret that ran the job (default: --api-key).")
    ] = None,
) -> None:
    """Decrypt a downloaded result blob (kiln-hpke-v1); no output file if it fails."""
    st = state(ctx)
    with errors_reported():
        path = Path(job)
        if path.is_file():
            try:
                data = load_job_json(path.read_text())
            except ValueError as exc:
                raise InputError(f"{path}: {exc}") from None
        else:
            data = st.kiln().jobs.get(job).raw
            if not isinstance(data.get("result"), dict):
                raise InputError(f"job {job} has no result")
        key = secret or st.api_key
        if not key:
            raise MissingCredentials("decrypting needs the API secret: --secret or KILN_API_KEY")
        saved = decrypt_file(
            blob,
            output,
            secret=key,
            job_id=str(data["id"]),
            encryption=data["result"]["encryption"],
        )
        st.output.note(f"decrypted to {saved}")


@app.command()
def verify(
    ctx: typer.Context,
    body: Annotated[Path, typer.Option("--body", help="The raw request body ('-': stdin).")],
    header: Annotated[
        list[str], typer.Option("--header", "-H", help="'webhook-id: …' (three of them).")
    ],
    secret: Annotated[str | None, typer.Option(help="whsec_… to check v1.")] = None,
    public_key: Annotated[str | None, typer.Option(help="Base64 Ed25519 key to check v1a.")] = None,
    fetch_public_key: Annotated[
        bool, typer.Option(help="Check v1a against the key the API serves.")
    ] = False,
    tolerance: Annotated[float, typer.Option(help="Seconds of timestamp drift.")] = 300,
) -> None:
    """Verify a webhook delivery; prints its event, or fails (exit 1)."""
    st = state(ctx)
    raw = sys.stdin.buffer.read() if str(body) == "-" else body.read_bytes()
    headers: dict[str, str] = {}
    for line in header:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    with errors_reported():
        key = public_key
        if fetch_public_key:
            key = st.kiln().webhooks.public_key()
        if secret is None and key is None:
            raise InputError("give --secret (v1), --public-key / --fetch-public-key (v1a), or both")
        event = verify_webhook(raw, headers, secret=secret, public_key=key, tolerance=tolerance)
        st.output.note(f"valid: {event.type} ({event.id})")
        st.output.show(event.raw)


@app.command()
def listen(
    ctx: typer.Context,
    forward_to: Annotated[str, typer.Option("--forward-to", help="Your local handler's URL.")],
    events_filter: Annotated[
        list[str] | None,
        typer.Option("--events", "-e", help="Event types to forward (globs; default job.*)."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar="KILN_LISTEN_SECRET", help="whsec_… to sign with (default: new)."),
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="Start after this cursor (default: from now on).")
    ] = None,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls of the feed.")] = 1.0,
) -> None:
    """Forward job events to a local URL, signed with a local secret (like stripe listen)."""
    st = state(ctx)
    out = st.output
    signing_secret = secret or new_secret()
    patterns = [p for item in events_filter or ["job.*"] for p in item.split(",") if p]
    with errors_reported():
        kiln = st.kiln()
        start = after if after is not None else kiln.events.latest_cursor()
        forwarder = Forwarder(kiln, forward_to, secret=signing_secret, patterns=patterns)
        ready = {"ready": True, "secret": signing_secret, "forward_to": forward_to, "after": start}
        if out.json_mode:
            out.json(ready, lines=True)
        else:
            out.out.print(
                f"Ready! Forwarding {', '.join(patterns)} to {forward_to}\n"
                f"Your webhook signing secret is [bold]{signing_secret}[/] (^C to quit)"
            )

        def report(item: Forwarded) -> None:
            if out.json_mode:
                out.json(item.as_dict(), lines=True)
                return
            outcome = f"[{item.status_code}]" if item.status_code else f"[{item.error}]"
            line = f"--> {item.type:<20} {item.job_id or ''} {outcome}"
            out.out.print(line, markup=False, highlight=False)

        try:
            forwarder.run(after=start, report=report, poll_interval=poll_interval)
        except KeyboardInterrupt:
            pass
