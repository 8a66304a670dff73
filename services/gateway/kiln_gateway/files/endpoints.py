"""Result downloads: `/api/v1/files/{token}`, streamed, no API key needed."""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from kiln_gateway.deps import StateDep
from kiln_gateway.files.service import resolve_download
from kiln_runtime.blobs import iter_chunks

router = APIRouter(tags=["files"])


@router.get(
    "/files/{token}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The encrypted result (a `kiln-hpke-v1` blob); the plaintext's type "
            "is in `X-Kiln-Content-Type`.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def download(token: str, state: StateDep) -> StreamingResponse:
    found = resolve_download(token, state.settings.files_signing_key, state.blobs)
    return StreamingResponse(
        iter_chunks(state.blobs.open(found.grant.blob_key)),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(found.size),
            # The plaintext's type; the body is the kiln-hpke-v1 blob.
            "X-Kiln-Content-Type": found.grant.content_type,
        },
    )
