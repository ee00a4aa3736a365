"""The HTTP side of ``stlpips-serve``, free of Ray: reading a multipart request within limits, and turning the
runtime's typed errors into JSON answers with their status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ImageError,
    ImageTooLargeError,
    InferenceError,
    ModelError,
    NotAnImageError,
    RequestError,
    RequestTooLargeError,
    StlpipsError,
)

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 16_000_000  # 4000 x 4000; a service is stricter than the library's 50 MP
MAX_FIELDS = 257  # ref + up to 256 candidates in one score_many request


@dataclass(frozen=True)
class Limits:
    """What one request may carry. ``max_pixels`` applies to each image and ``max_request_pixels`` to all of a
    request's images together, both from the image headers, before anything is decoded (decompression bombs)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS
    max_fields: int = MAX_FIELDS


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: 413 too large, 415 not an image, 400 any other bad input, 500 ours."""
    if isinstance(exc, ImageTooLargeError | RequestTooLargeError):
        return 413
    if isinstance(exc, NotAnImageError):
        return 415
    if isinstance(exc, ImageError | RequestError):
        return 400
    if isinstance(exc, InferenceError | ModelError):
        return 500
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{"error": {"type": ..., "message": ...}}``: the runtime's error class and its message. Anything that is
    not a runtime error is reported without its details (they may hold internals)."""
    if isinstance(exc, StlpipsError):
        return {"error": {"type": type(exc).__name__, "message": str(exc)}}
    return {"error": {"type": "InternalError", "message": "the service failed on this request; see its log"}}


async def read_body(headers: Any, stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, refused (:class:`RequestTooLargeError`) as soon as it is known to exceed ``limit``:
    from ``Content-Length`` before anything is read, else while it streams in."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise RequestTooLargeError(f"the body is {size} bytes, over this service's limit of {limit} bytes; "
                                       "send smaller images (or start the service with a larger --max-body-mb)")
    chunks, total = [], 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise RequestTooLargeError(f"the body is over this service's limit of {limit} bytes; send smaller "
                                       "images (or start the service with a larger --max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(headers: Any, body: bytes, limits: Limits) -> dict[str, list[bytes]]:
    """The multipart form's file fields: name -> the bytes of each part with that name, in order."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(f"Content-Type is {content_type or 'missing'!r}; send multipart/form-data with image "
                           "files in the fields ref and dist (curl -F ref=@a.png -F dist=@b.png)")

    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(headers, once(), max_files=limits.max_fields, max_fields=limits.max_fields,
                             max_part_size=limits.max_body_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(f"cannot parse the multipart body: {exc}") from None
    fields: dict[str, list[bytes]] = {}
    try:
        for name, value in form.multi_items():
            data = await value.read() if isinstance(value, UploadFile) else value.encode()
            fields.setdefault(name, []).append(data)
    finally:
        await form.close()
    return fields


def one_field(fields: dict[str, list[bytes]], name: str) -> bytes:
    values = fields.get(name, [])
    if len(values) != 1:
        raise RequestError(f"expected one {name!r} field with an image file, got {len(values)}; fields sent: "
                           f"{', '.join(sorted(fields)) or 'none'}")
    return values[0]
