"""The HTTP side of stlpips-serve without Ray or a web framework (stlpips_rt.scale.http): the limits, the status
and body of each error, the body read against its limit, the request guard in front of every route, and the checks
of a scoring form. The service itself, on Ray Serve: tests/test_ray_serve.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import pytest

from stlpips_rt import errors
from stlpips_rt.scale.http import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_FIELDS,
    Limits,
    RequestGuard,
    check_form,
    error_answer,
    error_body,
    header_pixels,
    is_oip,
    read_body,
    send_json,
    status_of,
)


def test_default_limits_and_they_stay_as_started() -> None:
    assert (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS, MAX_FIELDS) == (32 * 2**20, 4000 * 4000, 257)
    assert Limits() == Limits(max_body_bytes=DEFAULT_MAX_BODY_BYTES, max_pixels=DEFAULT_MAX_PIXELS,
                              max_request_pixels=2 * DEFAULT_MAX_PIXELS, max_fields=MAX_FIELDS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limits().max_pixels = 10**9  # a replica's limits cannot be changed under it


@pytest.mark.parametrize(("error", "status"), [
    (errors.ImageTooLargeError("a", "big"), 413),
    (errors.RequestTooLargeError("body"), 413),
    (errors.NotAnImageError("a", "text"), 415),
    (errors.NoSuchModelError("no model 'vgg-st' here"), 404),
    (errors.AuthenticationError("no token"), 401),
    (errors.ImageReadError("a", "cut"), 400),
    (errors.ImageSizeError("a", "small"), 400),
    (errors.MemoryBudgetError("a", "budget"), 400),
    (errors.RequestError("form"), 400),
    (errors.InferenceError("failed"), 500),
    (errors.ModelError("model"), 500),
    (errors.StlpipsError("other"), 500),
    (RuntimeError("ours"), 500),
])
def test_each_error_has_its_status(error: BaseException, status: int) -> None:
    assert status_of(error) == status


def test_error_bodies_name_the_runtime_error_and_hide_anything_else() -> None:
    assert error_body(errors.ImageSizeError("dist", "48x48, ref is 64x64")) == {
        "error": {"type": "ImageSizeError", "message": "dist: 48x48, ref is 64x64"}}
    assert error_body(KeyError("/secret/path")) == {
        "error": {"type": "InternalError", "message": "the service failed on this request; see its log"}}


def test_errors_under_v2_take_the_inference_protocol_s_shape() -> None:
    refused = errors.ImageSizeError("in1", "too small")
    assert [is_oip(p) for p in ("/v2", "/v2/models/alex-st/infer", "/v20", "/v1/score", "/", "/x/v2")] == \
        [True, True, False, False, False, False]
    assert error_answer(refused, "/v2/models/alex-st/infer") == {"error": "in1: too small"}
    assert error_answer(refused, "/v1/score") == error_body(refused)
    assert error_answer(RuntimeError("/secret"), "/v2") == {
        "error": "the service failed on this request; see its log"}


def test_header_pixels_or_zero_where_the_header_does_not_parse() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buf, format="PNG")
    data = buf.getvalue()
    assert header_pixels(data) == 600
    assert header_pixels(b"no image at all") == 0 and header_pixels(data[:10]) == 0  # left to the decoder


async def _stream(chunks: list[bytes], pulled: list[int]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        pulled.append(len(chunk))
        yield chunk


def _read(headers: dict[str, str], chunks: list[bytes], limit: int) -> tuple[bytes | BaseException, list[int]]:
    pulled: list[int] = []
    try:
        return asyncio.run(read_body(headers, _stream(chunks, pulled), limit)), pulled
    except errors.StlpipsError as exc:
        return exc, pulled


def test_a_body_up_to_the_limit_is_read_whole() -> None:
    assert _read({}, [b"ab", b"cd", b""], 4) == (b"abcd", [2, 2, 0])
    assert _read({"content-length": "4"}, [b"abcd"], 4) == (b"abcd", [4])
    assert _read({"content-length": "3"}, [b"abc"], 4) == (b"abc", [3])


def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    refused, pulled = _read({"content-length": "5"}, [b"abcde"], 4)
    assert isinstance(refused, errors.RequestTooLargeError) and pulled == []
    assert str(refused) == ("the body is 5 bytes, over this service's limit of 4 bytes; send smaller images (or start "
                            "the service with a larger --max-body-mb)")


def test_a_streamed_body_is_refused_at_the_chunk_that_crosses_the_limit() -> None:
    refused, pulled = _read({}, [b"ab", b"cd", b"e", b"never read"], 4)
    assert isinstance(refused, errors.RequestTooLargeError) and pulled == [2, 2, 1]
    assert str(refused).startswith("the body is over this service's limit of 4 bytes; send smaller images")
    # a client that declares less than it sends is held to the limit all the same
    refused, _ = _read({"content-length": "1"}, [b"abc", b"de"], 4)
    assert isinstance(refused, errors.RequestTooLargeError)


def test_a_content_length_that_is_no_number_is_a_bad_request() -> None:
    refused, pulled = _read({"content-length": "lots"}, [b"x"], 4)
    assert isinstance(refused, errors.RequestError) and not isinstance(refused, errors.RequestTooLargeError)
    assert str(refused) == "Content-Length 'lots' is not a number" and pulled == []


def _guard(scope: dict, messages: list[dict], limit: int = 100, app=None) -> tuple[list, list[dict]]:  # noqa: ANN001
    """RequestGuard on one request: (what the app saw: scope and each message it received, what was sent)."""
    seen: list = []
    sent: list[dict] = []
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def echo(scope: dict, receive, send) -> None:  # noqa: ANN001
        seen.append(scope)
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        seen.append(await receive())  # after the body: the real channel (a disconnect here)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(RequestGuard(app or echo, lambda: limit)(scope, receive, send))
    return seen, sent


def _http(path: str = "/v1/score", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    # "http" built at run time, as a server's parser builds it: an equal string, not the same object
    return {"type": "".join(("ht", "tp")), "method": "POST", "path": path, "headers": headers or []}


def test_the_guard_passes_other_scopes_through_untouched() -> None:
    scope = {"type": "lifespan"}
    seen, sent = _guard(scope, [{"type": "lifespan.startup"}], limit=0)
    assert seen[0] is scope and seen[1] == {"type": "lifespan.startup"} and sent[0]["status"] == 200


def test_the_guard_replays_the_body_once_then_the_real_channel() -> None:
    body = [{"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False}]
    seen, sent = _guard(_http("/v1/score/", [(b"Content-Length", b"4")]), body, limit=4)
    assert seen[0]["path"] == "/v1/score" and seen[0]["method"] == "POST"
    assert seen[1] == {"type": "http.request", "body": b"abcd", "more_body": False}
    assert seen[2] == {"type": "http.disconnect"}
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    seen, _ = _guard(_http("/"), [{"type": "http.request", "body": b""}])
    assert seen[0]["path"] == "/"
    seen, _ = _guard(_http("//"), [{"type": "http.request", "body": b""}])
    assert seen[0]["path"] == "/"


def test_the_guard_reads_header_names_in_any_case() -> None:
    seen, sent = _guard(_http(headers=[(b"CONTENT-LENGTH", b"101")]), [], limit=100)
    assert seen == [] and sent[0]["status"] == 413


def test_the_guard_answers_413_as_json_with_its_length() -> None:
    seen, sent = _guard(_http(), [{"type": "http.request", "body": b"x" * 101}], limit=100)
    assert seen == [] and sent[0]["status"] == 413
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(sent[1]["body"])).encode()
    assert json.loads(sent[1]["body"])["error"]["type"] == "RequestTooLargeError"


def test_the_guard_answers_v2_paths_in_the_protocol_s_shape() -> None:
    _, sent = _guard(_http("/v2/models/alex-st/infer"), [{"type": "http.request", "body": b"x" * 101}], limit=100)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"error": "the body is over this service's limit of 100 bytes; send "
                                                    "smaller images (or start the service with a larger "
                                                    "--max-body-mb)"}


def test_a_client_gone_before_its_body_ends_gets_nothing() -> None:
    seen, sent = _guard(_http(), [{"type": "http.request", "body": b"ab", "more_body": True},
                                  {"type": "http.disconnect"}])
    assert seen == [] and sent == []


def test_a_failure_before_the_answer_is_a_500_without_internals() -> None:
    async def failing(scope: dict, receive, send) -> None:  # noqa: ANN001
        raise KeyError("/secret/path")

    _, sent = _guard(_http(), [{"type": "http.request", "body": b""}], app=failing)
    assert sent[0]["status"] == 500 and len(sent) == 2
    assert json.loads(sent[1]["body"]) == {"error": {"type": "InternalError",
                                                     "message": "the service failed on this request; see its log"}}


def test_a_failure_after_the_answer_started_sends_nothing_more() -> None:
    async def half(scope: dict, receive, send) -> None:  # noqa: ANN001
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("late")

    _, sent = _guard(_http(), [{"type": "http.request", "body": b""}], app=half)
    assert [m.get("status") for m in sent] == [200]


def test_send_json_sets_type_and_length() -> None:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(send_json(send, 418, {"a": "é"}))
    assert sent[0] == {"type": "http.response.start", "status": 418,
                       "headers": [(b"content-type", b"application/json"), (b"content-length", b"15")]}
    assert sent[1] == {"type": "http.response.body", "body": json.dumps({"a": "é"}).encode()}


MULTIPART = "multipart/form-data; boundary=x"


@pytest.mark.parametrize(("content_type", "names", "many", "message"), [
    ("application/json", ["ref", "dist"], False,
     "Content-Type is 'application/json'; send multipart/form-data with image files in the fields ref and dist "
     "(curl -F ref=@a.png -F dist=@b.png)"),
    ("", ["ref", "dist"], False, "Content-Type is 'missing'; send multipart/form-data"),
    (MULTIPART, ["ref"] + ["dist"] * 4, False, "cannot parse the multipart body: 5 parts, over this service's limit "
                                                "of 4 (one ref and at most 3 dist)"),
    (MULTIPART, [], False, "expected one 'ref' field with an image file, got 0; fields sent: none"),
    (MULTIPART, ["dist", "ref", "ref"], False, "expected one 'ref' field with an image file, got 2; fields sent: "
                                               "dist, ref"),
    (MULTIPART, ["ref", "x"], False, "expected one 'dist' field with an image file, got 0; fields sent: ref, x"),
    (MULTIPART, ["ref", "dist", "dist"], False, "expected one 'dist' field with an image file, got 2"),
    (MULTIPART, ["dist", "dist"], True, "expected one 'ref' field with an image file, got 0; fields sent: dist"),
    (MULTIPART, ["ref", "other"], True, "expected one or more 'dist' fields with image files, got none"),
])
def test_a_bad_form_is_refused_with_what_to_send(content_type: str, names: list[str], many: bool,
                                                 message: str) -> None:
    with pytest.raises(errors.RequestError) as refused:
        check_form(content_type, names, Limits(max_fields=4), many=many)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(("names", "many"), [(["ref", "dist"], False), (["dist", "ref"], False),
                                             (["ref", "dist"], True), (["ref", "dist", "dist", "dist"], True)])
def test_a_good_form_passes(names: list[str], many: bool) -> None:
    check_form("multipart/form-data; boundary=x", names, Limits(max_fields=4), many=many)


@pytest.mark.parametrize("field", ["ref", "dist"])
def test_a_field_sent_as_text_is_refused_by_name(field: str) -> None:
    with pytest.raises(errors.RequestError, match=f"field '{field}' is a text value, not a file"):
        check_form("multipart/form-data; boundary=x", ["ref", "dist"], Limits(), many=False, text_fields=(field,))
