"""A small HTTP client for the stlpips-serve tests: seeded PNG pairs, multipart bodies, one request per connection
on 127.0.0.1 with a timeout (no request can hang a test), the bearer token where a test gives one, and the
listening sockets of a process tree."""

from __future__ import annotations

import http.client
import io
import json
import socket
import uuid
from collections.abc import Iterable

import numpy as np
import psutil
from PIL import Image

HOST = "127.0.0.1"
TIMEOUT_S = 120


def png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def multipart(fields: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in fields)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Client:
    """Requests to the service on ``port``; ``token``: sent as ``Authorization: Bearer`` on every request."""

    def __init__(self, port: int, token: str | None = None, timeout: float = TIMEOUT_S) -> None:
        self.port = port
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, fields: list[tuple[str, bytes]] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        status, _, data = self.raw(method, path, fields, headers=headers)
        return status, json.loads(data)

    def raw(self, method: str, path: str, fields: list[tuple[str, bytes]] | None = None,
            body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        """(status, Content-Type, body bytes) of one request: multipart ``fields``, or ``body`` as it is."""
        status, response_headers, data = self.full(method, path, fields, body, headers)
        return status, response_headers.get("content-type", ""), data

    def full(self, method: str, path: str, fields: list[tuple[str, bytes]] | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body bytes) of one request."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            headers = dict(headers or {})
            if self.token is not None:
                headers.setdefault("Authorization", f"Bearer {self.token}")
            if fields is not None:
                body, headers["Content-Type"] = multipart(fields)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def listening_sockets(root: psutil.Process) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every TCP socket listening in ``root`` and all its descendants."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback seen through an IPv6 socket (::ffff:127.x.y.z)."""
    address = address.removeprefix("::ffff:")
    return address == "::1" or address.startswith("127.")


def assert_loopback_only(sockets: Iterable[tuple[int, str, str, int]]) -> None:
    beyond = [s for s in sockets if not is_loopback(s[2])]
    assert not beyond, f"listening beyond loopback: {beyond}"
