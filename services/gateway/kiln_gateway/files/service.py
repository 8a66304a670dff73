"""Which blob a download link opens: a signed token that has not expired, naming a blob that
exists. Nothing else distinguishes links, so every refusal is the same 404."""

from dataclasses import dataclass

from kiln_gateway.errors import NotFound
from kiln_runtime.blobs import BlobStore
from kiln_runtime.file_tokens import FileGrant, InvalidFileToken, verify_file_token

NO_SUCH_FILE = "No such file, or its link expired."


@dataclass(frozen=True)
class Download:
    grant: FileGrant
    size: int


def resolve_download(token: str, signing_key: str, blobs: BlobStore) -> Download:
    try:
        grant = verify_file_token(token, signing_key)
    except InvalidFileToken as exc:
        raise NotFound(NO_SUCH_FILE) from exc
    size = blobs.size(grant.blob_key)
    if size is None:
        raise NotFound(NO_SUCH_FILE)
    return Download(grant, size)
