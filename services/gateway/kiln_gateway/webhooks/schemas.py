"""API models of webhooks: request bodies, response shapes, and the JSON of an endpoint and of
a delivery with its attempts."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from kiln_gateway.bodies import Strict
from kiln_gateway.pagination import Pagination
from kiln_gateway.tables import WebhookAttemptRecord, WebhookDeliveryRecord, WebhookEndpoint
from kiln_gateway.timestamps import iso_utc

EventType = Literal["job.completed", "job.failed", "job.canceled"]


# ------------------------------------------------------------------------- request bodies


class EndpointCreate(Strict):
    url: str = Field(min_length=1, max_length=2048, description="https URL receiving webhooks.")
    event_types: list[EventType] = Field(
        default_factory=list,
        max_length=3,
        description="Event types to send; empty (the default) sends every type.",
    )
    description: str = Field(default="", max_length=500)


class EndpointUpdate(Strict):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[EventType] | None = Field(default=None, max_length=3)
    description: str | None = Field(default=None, max_length=500)


# ------------------------------------------------------------------------- response shapes


class EndpointData(BaseModel):
    id: str
    url: str
    event_types: list[str] = Field(description="Empty: every event type.")
    description: str
    status: Literal["enabled", "disabled"] = Field(
        description="`disabled` after the receiver answered 410 Gone; an update re-enables it."
    )
    created_at: str
    updated_at: str
    disabled_at: str | None


class NewEndpointData(EndpointData):
    secret: str = Field(description="The `whsec_` signing secret. Shown only in this response.")


class EndpointResponse(BaseModel):
    data: EndpointData


class NewEndpointResponse(BaseModel):
    data: NewEndpointData


class EndpointListResponse(BaseModel):
    data: list[EndpointData]
    pagination: Pagination


class SecretData(BaseModel):
    secret: str


class SecretResponse(BaseModel):
    data: SecretData


class PublicKeyData(BaseModel):
    algorithm: Literal["ed25519"]
    signature_version: Literal["v1a"]
    public_key: str = Field(description="The raw 32-byte Ed25519 public key, standard base64.")


class PublicKeyResponse(BaseModel):
    data: PublicKeyData


class AttemptData(BaseModel):
    attempt: int
    attempted_at: str
    status_code: int | None = Field(description="None when no HTTP answer came.")
    latency_ms: int
    error: str | None
    outcome: Literal["delivered", "retrying", "failed"]
    next_attempt_at: str | None


class DeliveryData(BaseModel):
    id: str
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    endpoint_id: str | None = Field(description="None for a job's own `webhook_url`.")
    url: str
    event_type: str
    job_id: str | None
    status: Literal["retrying", "delivered", "failed"]
    attempts: list[AttemptData]
    next_attempt_at: str | None
    created_at: str
    updated_at: str


class DeliveryResponse(BaseModel):
    data: DeliveryData


class DeliveryListResponse(BaseModel):
    data: list[DeliveryData]
    pagination: Pagination


class RedeliveryData(BaseModel):
    delivery_id: str
    webhook_id: str
    status: Literal["requested"]


class RedeliveryResponse(BaseModel):
    data: RedeliveryData


class TestEventData(BaseModel):
    endpoint_id: str
    test_id: str = Field(description="The test event's `webhook-id`.")
    status: Literal["requested"]


class TestEventResponse(BaseModel):
    data: TestEventData


def endpoint_json(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types or []),
        "description": endpoint.description,
        "status": "disabled" if endpoint.disabled_at is not None else "enabled",
        "created_at": iso_utc(endpoint.created_at),
        "updated_at": iso_utc(endpoint.updated_at),
        "disabled_at": iso_utc(endpoint.disabled_at),
    }
    if secret is not None:
        data["secret"] = secret
    return data


def delivery_json(
    delivery: WebhookDeliveryRecord, attempts: list[WebhookAttemptRecord]
) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "endpoint_id": delivery.endpoint_id or None,
        "url": delivery.url,
        "event_type": delivery.event_type,
        "job_id": delivery.job_id or None,
        "status": delivery.status,
        "attempts": [
            {
                "attempt": a.attempt,
                "attempted_at": iso_utc(a.attempted_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "outcome": a.outcome,
                "next_attempt_at": iso_utc(a.next_attempt_at),
            }
            for a in sorted(attempts, key=lambda a: a.attempt)
        ],
        "next_attempt_at": iso_utc(delivery.next_attempt_at),
        "created_at": iso_utc(delivery.created_at),
        "updated_at": iso_utc(delivery.updated_at),
    }
