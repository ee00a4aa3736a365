"""The HTTP side of ``stlpips-serve``, free of Ray and of any web framework: the limits of one request, the ASGI
guard that enforces the body limit before the routes see a byte, the bearer-token check, the checks of a scoring
form, and the runtime's typed errors turned into JSON answers with their status codes, in the shape of the route's
protocol (``/v1``'s ``{"error": {"type", "message"}}``, the Open Inference Protocol's ``{"error": "..."}`` under
``/v2``)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import (
    AuthenticationError,
    ImageError,
    ImageTooLargeError,
    InferenceError,
    ModelError,
    NoSuchModelError,
    NotAnImageError,
    RequestError,
    RequestTooLargeError,
    StlpipsError,
    describe,
)

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 16_000_000  # 4000 x 4000; a service is stricter than the library's 50 MP
MAX_FIELDS = 257  # ref + up to 256 candidates in one score_many request

log = logging.getLogger("stlpips.serve")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    """What one request may carry. ``max_pixels`` applies to each image and ``max_request_pixels`` to all of a
    request's images together, both from the image headers, before anything is decoded (decompression bombs)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS
    max_fields: int = MAX_FIELDS


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: 401 no valid token, 413 too large, 415 not an image, 400 any other bad input,
    500 ours."""
    if isinstance(exc, AuthenticationError):
        return 401
    if isinstance(exc, ImageTooLargeError | RequestTooLargeError):
        return 413
    if isinstance(exc, NotAnImageError):
        return 415
    if isinstance(exc, NoSuchModelError):
        return 404
    if isinstance(exc, ImageError | RequestError):
        return 400
    if isinstance(exc, InferenceError | ModelError):
        return 500
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{"error": {"type": ..., "message": ...}}``: the runtime's error class and its message. Anything that is
    not a runtime error is reported without its details (they may hold internals)."""
    if isinstance(exc, StlpipsError):
        return {"error": {"type": type(exc).__name__, "message": describe(exc, "service")}}
    return {"error": {"type": "InternalError", "message": "the service failed on this request; see its log"}}


#: The path prefix of the Open Inference Protocol's routes.
OIP_PREFIX = "/v2"


def is_oip(path: str) -> bool:
    """Whether ``path`` is one of the Open Inference Protocol's (``/v2`` and below)."""
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def error_answer(exc: BaseException, path: str) -> dict[str, Any]:
    """The JSON of an error answer on ``path``: :func:`error_body` on ``/v1`` and the other routes, the Open
    Inference Protocol's ``{"error": "<message>"}`` under ``/v2`` (clients such as tritonclient read that shape)."""
    body = error_body(exc)
    return {"error": body["error"]["message"]} if is_oip(path) else body


def header_pixels(data: bytes) -> int:
    """The pixels an encoded image's header declares, read without decoding it; 0 for data whose header does not
    parse (the decoder then reports it with its proper error)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except Exception:  # noqa: BLE001 - reported with its proper type by the decoder
        return 0


async def read_body(headers: Any, stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, refused (:class:`RequestTooLargeError`) as soon as it is known to exceed ``limit``:
    from ``Content-Length`` before anything is read, else while it streams in (a chunked or lying client)."""
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


class _Disconnected(Exception):
    """The client went away before its body was complete: nobody is left to answer."""


class RequestGuard:
    """ASGI middleware in front of every route of the service:

    - the body limit: a ``Content-Length`` over ``max_body_bytes()`` is answered 413 before anything is read;
      any other body is read here chunk by chunk and refused (413) at the first chunk that takes it over the
      limit, so that a chunked or lying client cannot make the service hold more; the routes (and the web
      framework's form parser) then get the body replayed from memory;
    - a trailing slash is ignored (``/v1/score/`` is ``/v1/score``), as the service always did;
    - an exception that no handler answered becomes a 500 ``InternalError`` answer, logged with its traceback.

    ``max_body_bytes`` is called per request: a replica's limit is known only once the replica is built."""

    def __init__(self, app: ASGIApp, max_body_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        try:
            body = await read_body(headers, _body_chunks(receive), self.max_body_bytes())
        except _Disconnected:
            return
        except StlpipsError as exc:
            await send_json(send, status_of(exc), error_answer(exc, scope["path"]))
            return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _replay(body, receive), tracked_send)
        except Exception as exc:  # noqa: BLE001 - a bad request answers with an error, never ends the replica
            log.exception("unexpected failure on %s %s", scope.get("method"), scope["path"])
            if not started:
                await send_json(send, 500, error_answer(exc, scope["path"]))


async def _body_chunks(receive: Callable[[], Awaitable[dict]]) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that gives ``body`` in one message, then waits on the real one (disconnects)."""
    pending = True

    async def replayed() -> dict:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def send_json(send: Callable[[dict], Awaitable[None]], status: int, content: dict[str, Any],
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def check_form(content_type: str, names: Sequence[str], limits: Limits, *, many: bool,
               text_fields: Sequence[str] = ()) -> None:
    """Refuse (:class:`RequestError`) a scoring request that is not a multipart form, has more parts than
    ``limits.max_fields``, lacks its fields (exactly one ``ref``, and one ``dist``; ``many``: one or more), or sends
    one of them as a text value instead of a file. ``names`` are the form's field names, one per part, in order;
    ``text_fields`` the names of the parts that are text values."""
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(f"Content-Type is {content_type or 'missing'!r}; send multipart/form-data with image "
                           "files in the fields ref and dist (curl -F ref=@a.png -F dist=@b.png)")
    if len(names) > limits.max_fields:
        raise RequestError(f"cannot parse the multipart body: {len(names)} parts, over this service's limit of "
                           f"{limits.max_fields} (one ref and at most {limits.max_fields - 1} dist)")
    sent = ", ".join(sorted(set(names))) or "none"
    for name in ("ref",) if many else ("ref", "dist"):
        if (count := names.count(name)) != 1:
            raise RequestError(f"expected one {name!r} field with an image file, got {count}; fields sent: {sent}")
    if many and "dist" not in names:
        raise RequestError("expected one or more 'dist' fields with image files, got none")
    for name in ("ref", "dist"):
        if name in text_fields:
            raise RequestError(f"field {name!r} is a text value, not a file; send the image as a file upload "
                               f"(curl -F {name}=@image.png)")


# --- the bearer token (opt in) ---------------------------------------------------------------------------------
TOKEN_ENV = "STLPIPS_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
NEW_TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def token_sha256(token: str) -> str:
    """What the service keeps of its token: the hex sha256 (the token itself never goes to the cluster)."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_token(token_file: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> str | None:
    """The service's token: the first line of ``token_file`` (surrounding whitespace stripped), else
    ``$STLPIPS_SERVE_TOKEN``, else None (no token: the service answers without one). Raises ValueError, with what
    to do, for an unreadable file and for a token under 16 characters."""
    environ = os.environ if environ is None else environ
    if token_file is not None:
        try:
            lines = open(token_file, encoding="utf-8").read().splitlines()  # noqa: SIM115 - read in one go
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the token file {os.fspath(token_file)!r}: {exc}") from None
        token, source = (lines[0].strip() if lines else ""), f"the token file {os.fspath(token_file)!r}"
    elif environ.get(TOKEN_ENV):
        token, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{source} holds a token of {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                         f"random ones, e.g. from {NEW_TOKEN_HINT}")
    return token


class TokenAuth:
    """ASGI middleware in front of everything else: when the service has a token (``token_sha256()`` is not None),
    a request to any path but the open ones must carry ``Authorization: Bearer <token>``; without it, or with
    another token, it is answered 401 with the error body and ``WWW-Authenticate: Bearer`` (RFC 6750) before any
    of its body is read. The token is compared by its sha256, with :func:`hmac.compare_digest` (constant time).
    ``is_open(path)`` names the paths that stay open (health checks, the API's description); a trailing slash is
    ignored, as everywhere in the service."""

    def __init__(self, app: ASGIApp, token_sha256: Callable[[], str | None], is_open: Callable[[str], bool]) -> None:
        self.app = app
        self.token_sha256 = token_sha256
        self.is_open = is_open

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        expected = self.token_sha256() if scope["type"] == "http" else None
        if expected is None or self.is_open(scope["path"].rstrip("/") or "/"):
            await self.app(scope, receive, send)
            return
        values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
        problem = bearer_problem(values, expected)
        if problem is None:
            await self.app(scope, receive, send)
            return
        challenge = b'Bearer realm="stlpips-serve"' + (b', error="invalid_token"' if problem[1] else b"")
        await send_json(send, 401, error_answer(AuthenticationError(problem[0]), scope["path"]),
                        [(b"www-authenticate", challenge)])


def bearer_problem(authorization: Sequence[str], expected_sha256: str) -> tuple[str, bool] | None:
    """None when the ``Authorization`` values of a request (HTTP headers, gRPC metadata) are one
    ``Bearer <token>`` whose sha256 is ``expected_sha256`` (compared with :func:`hmac.compare_digest`); else (what
    is wrong, whether a token was sent)."""
    if not authorization:
        return ("this service requires a token: send the header 'Authorization: Bearer <token>'", False)
    scheme, _, token = authorization[0].strip().partition(" ")
    if len(authorization) > 1 or scheme.lower() != "bearer" or not token.strip():
        return ("send the token as one header 'Authorization: Bearer <token>'", False)
    if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), bytes.fromhex(expected_sha256)):
        return ("the token sent is not this service's token", True)
    return None
