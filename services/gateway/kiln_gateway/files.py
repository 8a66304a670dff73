"""Result downloads: `/api/v1/files/{token}`, streamed, no API key needed."""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from kiln_gateway.deps import StateDep
from kiln_gateway.errors import NotFound
from kiln_runtime.blobs import iter_chunks
from kiln_runtime.file_tokens import InvalidFileToken, verify_file_token

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
    try:
        grant = verify_file_token(token, state.settings.files_signing_key)
    except InvalidFileToken as exc:
        raise NotFound("No such file, or its link expired.") from exc
    size = state.blobs.size(grant.blob_key)
    if size is None:
        raise NotFound("No such file, or its link expired.")
    return StreamingResponse(
        iter_chunks(state.blobs.open(grant.blob_key)),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            # The plaintext's type; the body is the kiln-hpke-v1 blob.
            "X-Kiln-Content-Type": grant.content_type,
        },
    )
