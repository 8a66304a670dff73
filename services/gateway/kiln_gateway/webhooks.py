"""Webhook settings (`/api/v1/webhooks/...`). Account-level endpoints come with issue 6."""

from typing import Any

from fastapi import APIRouter

from kiln_gateway.deps import CallerDep

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get("/default-secret")
async def default_secret(caller: CallerDep) -> dict[str, Any]:
    """The secret that signs deliveries to a job's own `webhook_url`."""
    return {"data": {"secret": caller.account.default_webhook_secret}}
