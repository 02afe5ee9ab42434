"""Slow and oversized clients against a real ``etchr serve verifier`` (production's start path), raw sockets.

The server runs with 1 s head and body clocks (``ETCHR_HTTP_*``), so a client trickling a request head or body
must be answered and disconnected within about a second; plain uvicorn kept every such connection open. Each
test bounds its own loops and only talks to loopback.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import EtchrProcess, wait_until

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1.5
MAX_HEAD_BYTES = 8 * 1024
# A busy CI machine may start closing late; plain uvicorn never closes at all, so generous slack still tells.
SLACK_S = 4.0


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_API_KEYS": "",
        "ETCHR_HTTP_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "ETCHR_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "ETCHR_HTTP_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
        "ETCHR_HTTP_MAX_HEAD_BYTES": str(MAX_HEAD_BYTES),
    }
    log = tmp_path_factory.mktemp("slow-clients") / "verifier.log"
    process = EtchrProcess(["serve", "verifier", "--host", "127.0.0.1", "--port", str(port)], env, log)
    served = Server("127.0.0.1", port)

    def alive() -> bool:
        try:
            return httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(alive, 60, "etchr serve verifier")
        yield served
        assert "Traceback" not in process.log(), process.log()  # no request above ended in an app error
    finally:
        process.stop()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def is_closed(sock: socket.socket) -> bool:
    """True once the server closed (EOF or reset); data it sent first is read and dropped."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def trickle(sock: socket.socket, pieces: Iterator[bytes], *, every_s: float, for_s: float) -> float | None:
    """Send one piece every ``every_s`` until the server closes; the seconds that took, or None if it never
    closed within ``for_s``."""
    started = time.monotonic()
    while time.monotonic() - started < for_s:
        if is_closed(sock):
            return time.monotonic() - started
        try:
            sock.sendall(next(pieces))
        except OSError:  # the server closed between our check and the send
            return time.monotonic() - started
        time.sleep(every_s)
    return None


def header_bytes() -> Iterator[bytes]:
    while True:
        yield from (bytes([byte]) for byte in b"X-Slow: y\r\n")


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection right after it


def read_response(sock: socket.socket, *, timeout: float = 10.0) -> RawResponse:
    """One HTTP/1.1 response with a content-length body, read off a raw socket; then whether EOF follows."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        rest += chunk
    sock.settimeout(0.5)  # an error response is followed by EOF at once; keep-alive lasts KEEP_ALIVE_S
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    except OSError:
        closed = True
    return RawResponse(int(status_line.split()[1]), headers, rest[:length], closed)


def assert_json_error(response: RawResponse, status: int, type_: str) -> dict[str, object]:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json", response.headers
    assert response.headers.get("x-request-id")
    error = json.loads(response.body)["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["type"] == type_, error
    return error


def get(path: str = "/healthz", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + extra + b"\r\n"


def answer_head(length: int) -> bytes:
    return (
        b"POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


# ------------------------------------------------------------------------------------------- request heads


def test_trickled_head_gets_408_and_is_closed(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        took = trickle(sock, header_bytes(), every_s=0.2, for_s=HEAD_TIMEOUT_S + SLACK_S)
        assert took is not None, "a connection trickling its head was never closed"
        assert took <= HEAD_TIMEOUT_S + SLACK_S
    # The 408 itself, on a connection that stops mid-head.
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half")
        started = time.monotonic()
        response = read_response(sock, timeout=HEAD_TIMEOUT_S + SLACK_S)
        assert time.monotonic() - started <= HEAD_TIMEOUT_S + SLACK_S
    error = assert_json_error(response, 408, "request_timeout")
    assert "ETCHR_HTTP_HEADER_TIMEOUT_S" in str(error["message"])
    assert response.closed


def test_silent_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        sock.settimeout(HEAD_TIMEOUT_S + SLACK_S)
        started = time.monotonic()
        assert sock.recv(1) == b""  # EOF, no response: it never asked for anything
        assert time.monotonic() - started <= HEAD_TIMEOUT_S + SLACK_S


def test_keep_alive_then_trickled_next_head_is_closed(server: Server) -> None:
    with connect(server) as sock:
        for _ in range(2):  # keep-alive works for well-behaved requests
            sock.sendall(get())
            response = read_response(sock, timeout=10)
            assert response.status == 200 and not response.closed
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next head starts at once, then crawls
        took = trickle(sock, header_bytes(), every_s=0.2, for_s=HEAD_TIMEOUT_S + SLACK_S)
        assert took is not None, "a keep-alive connection trickling its next head was never closed"


def test_idle_keep_alive_closes_after_the_setting(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(get())
        started = time.monotonic()
        response = read_response(sock)
        assert response.status == 200 and not response.closed
        sock.settimeout(KEEP_ALIVE_S + 2.0)  # uvicorn's own default (5 s) is too late
        assert sock.recv(1) == b""
        assert KEEP_ALIVE_S - 0.5 <= time.monotonic() - started <= KEEP_ALIVE_S + 2.0


def test_flood_of_trickling_connections_is_shed_while_others_are_served(server: Server) -> None:
    connections = 100
    socks = [connect(server) for _ in range(connections)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        pieces = header_bytes()
        open_socks = set(socks)
        started = time.monotonic()
        served = httpx.get(f"{server.url}/healthz", timeout=10)  # a normal client, mid-flood
        assert served.status_code == 200
        while open_socks and time.monotonic() - started < HEAD_TIMEOUT_S + SLACK_S:
            piece = next(pieces)
            for sock in list(open_socks):
                if is_closed(sock):
                    open_socks.discard(sock)
                    continue
                try:
                    sock.sendall(piece)
                except OSError:
                    open_socks.discard(sock)
            time.sleep(0.2)
        assert not open_socks, f"{len(open_socks)} of {connections} trickling connections still open"
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        for sock in socks:
            sock.close()


# -------------------------------------------------------------------------------------------- request bodies


def test_trickled_body_gets_408_json_and_is_closed(server: Server) -> None:
    body = json.dumps({"image": "A" * 2000, "question": "What colour is the square in the picture?"}).encode()
    # A body that arrives steadily, in pieces above the minimum rate, is read normally.
    with connect(server) as sock:
        sock.sendall(answer_head(len(body)))
        for start in range(0, len(body), 512):
            sock.sendall(body[start : start + 512])
            time.sleep(0.05)
        steady = read_response(sock, timeout=30)
        assert steady.status != 408, steady
    # One byte at a time: the app answers 408 in the one error shape and the connection is closed.
    with connect(server) as sock:
        sock.sendall(answer_head(len(body)))
        pieces = (bytes([byte]) for byte in body)
        took = trickle(sock, pieces, every_s=0.3, for_s=BODY_TIMEOUT_S + SLACK_S)
        assert took is not None, "a body sent at about 3 bytes per second was never cut off"
    with connect(server) as sock:
        sock.sendall(answer_head(len(body)) + body[:10])
        started = time.monotonic()
        response = read_response(sock, timeout=BODY_TIMEOUT_S + SLACK_S)
        assert time.monotonic() - started <= BODY_TIMEOUT_S + SLACK_S
    error = assert_json_error(response, 408, "request_timeout")
    assert "ETCHR_HTTP_BODY_TIMEOUT_S" in str(error["message"])
    assert response.headers.get("connection") == "close" and response.closed


def test_body_left_unread_after_the_answer_does_not_hold_the_connection(server: Server) -> None:
    """The app answers (404) without reading the body; the client then crawls through the rest of it."""
    with connect(server) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nxx")
        assert read_response(sock, timeout=10).status == 404
        took = trickle(sock, iter(lambda: b"x", None), every_s=0.3, for_s=BODY_TIMEOUT_S + SLACK_S)
        assert took is not None, "the rest of an unread body kept the connection open"


# ---------------------------------------------------------------------------------------- oversized heads


def test_long_url_gets_a_json_414(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(get("/healthz?q=" + "a" * 100_000))
        response = read_response(sock)
    error = assert_json_error(response, 414, "uri_too_long")
    assert "ETCHR_HTTP_MAX_HEAD_BYTES" in str(error["message"])
    assert response.closed


def test_oversized_headers_get_a_json_431(server: Server) -> None:
    many = b"".join(f"X-Filler-{index}: {'v' * 100}\r\n".encode() for index in range(200))
    with connect(server) as sock:
        sock.sendall(get(extra=many))
        assert_json_error(read_response(sock), 431, "request_header_fields_too_large")
    # One header line that never ends, sent in pieces: refused once it passes the limit, not buffered forever.
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        sent = 0
        while sent < 4 * MAX_HEAD_BYTES and not select.select([sock], [], [], 0.005)[0]:
            sock.sendall(b"v" * 1024)  # stops as soon as the answer is there to read
            sent += 1024
        assert sent < 4 * MAX_HEAD_BYTES, "an endless header line was buffered without limit"
        response = read_response(sock)
    assert_json_error(response, 431, "request_header_fields_too_large")


def test_malformed_request_gets_a_json_400(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Name: x\r\n\r\n")
        response = read_response(sock)
    assert_json_error(response, 400, "invalid_request")
    assert response.closed
