"""How every ETCHR HTTP server runs under uvicorn: one ``uvicorn.Config`` and one hardened HTTP/1.1 protocol.

``etchr serve`` (so Docker, compose, Kubernetes and ``etchr up``) and the editor worker's probe port all start
uvicorn through :func:`uvicorn_config`, so every deployment gets the same limits.

Why a protocol subclass and not only uvicorn's options: uvicorn bounds the idle time *between* requests
(``timeout_keep_alive``) but never the time a client takes to send a request head or body, and httptools
(llhttp) has no size limit on the head. A client trickling either held a connection, and a file descriptor,
forever. :class:`GuardedHttpToolsProtocol` extends uvicorn's default protocol (httptools, which
``uvicorn[standard]`` installs) with:

- **Head clock** (``ETCHR_HTTP_HEADER_TIMEOUT_S``): a request head must be complete this long after the
  connection opened, or after its first byte for a later request on a keep-alive connection (counted from
  the end of the previous response when it was sent during one). Then: a JSON 408 when part of a head
  came, a silent close when nothing did. Idle keep-alive connections stay uvicorn's business
  (``timeout_keep_alive``, ``ETCHR_HTTP_KEEP_ALIVE_S``).
- **Body clock** (``ETCHR_HTTP_BODY_TIMEOUT_S``, ``ETCHR_HTTP_BODY_MIN_RATE``): the body may pause for at
  most the timeout, and must arrive at the minimum rate on average after a grace of the timeout (Apache
  mod_reqtimeout's rule: the budget grows by one second per ``min_rate`` bytes received). A fixed total
  budget would cut legitimate large uploads on slow links; an idle limit alone lets 1 byte/s through. When it
  passes, the application's next ``receive()`` raises :class:`RequestBodyTimeout`, which the app renders as
  a JSON 408 (with its request id and metrics); the connection closes after that response. If the
  app does not answer within a second (it is not reading the body), the protocol writes the 408 itself; if
  the response was already sent, the connection is just closed. Time the server makes the client wait
  (reading paused because the app has not taken the body yet) is not counted against it.
- **Head size** (``ETCHR_HTTP_MAX_HEAD_BYTES``): a request line longer than the limit gets a JSON 414,
  a head longer than it a JSON 431; other malformed requests a JSON 400 instead of uvicorn's plain text.
  The same limit goes to uvicorn's ``h11_max_incomplete_event_size`` (the pure-Python h11 protocol's).

Errors the protocol writes itself carry the one error body (``{"error": {...}}``) and an ``x-request-id``; it
then half-closes and drops further input for up to ``LINGER_S`` before closing, so a client still sending
reads the error instead of a connection reset.

WebSockets are off (``ws="none"``): no service speaks them, and an upgrade would leave these clocks behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from asyncio import TimerHandle
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
import uvicorn
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn._types import ASGIReceiveCallable, ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from etchr.protocol.errors import ErrorBody, ErrorDetail
from etchr.settings import CommonSettings

# After the body clock ran out, how long the app gets to answer (its receive() raises at once) before the
# protocol answers for it: only an app that is not reading the body takes longer.
APP_ANSWER_GRACE_S = 1.0
# After an error the protocol writes itself, how long the client's further input is read and dropped.
LINGER_S = 2.0
# uvicorn's graceful shutdown: in-flight requests get this long after SIGTERM (k8s terminationGracePeriod
# accounts for it).
GRACEFUL_SHUTDOWN_S = 30


@dataclass(frozen=True)
class HttpLimits:
    """The connection limits every server applies (see the module docstring for what each bounds)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_min_rate: int = 16 * 1024
    keep_alive_s: float = 5.0
    max_head_bytes: int = 32 * 1024

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> HttpLimits:
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            body_min_rate=settings.http_body_min_rate,
            keep_alive_s=settings.http_keep_alive_s,
            max_head_bytes=settings.http_max_head_bytes,
        )


class RequestBodyTimeout(StarletteHTTPException):
    """Raised from ``receive()`` when the body clock ran out; an HTTPException so FastAPI's body parsing lets
    it through to the app's JSON error handler."""

    def __init__(self, limits: HttpLimits) -> None:
        super().__init__(
            408,
            f"request body not received in time: it may pause at most {limits.body_timeout_s:g} s and must "
            f"average {limits.body_min_rate} bytes/s after that grace "
            "(ETCHR_HTTP_BODY_TIMEOUT_S, ETCHR_HTTP_BODY_MIN_RATE)",
        )


class _HeadTooLarge(httptools.HttpParserError):
    """Raised inside a parser callback; httptools turns it into an HttpParserError that uvicorn answers via
    ``send_400_response``, where the recorded rejection picks the status."""


@dataclass
class _BodyClock:
    """Progress of one request's body against :class:`HttpLimits`' body rule."""

    cycle: RequestResponseCycle
    started: float
    last_byte: float
    received: int = 0
    timed_out: bool = False
    timer: TimerHandle | None = field(default=None, repr=False)

    def deadline(self, limits: HttpLimits) -> float:
        idle = self.last_byte + limits.body_timeout_s
        if limits.body_min_rate <= 0:
            return idle
        return min(idle, self.started + limits.body_timeout_s + self.received / limits.body_min_rate)

    def forgive(self, now: float, limits: HttpLimits) -> None:
        """Count a wait the server caused as on time: no idle time, and the rate rule met so far."""
        self.last_byte = now
        if limits.body_min_rate > 0:
            self.started = now - self.received / limits.body_min_rate

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head/body clocks, a head size limit, and JSON protocol errors.

    ``limits`` is a class attribute because uvicorn builds the protocol from a class; :func:`protocol_class`
    makes the subclass carrying a server's limits.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: TimerHandle | None = None
        self._head_begun = False  # bytes of a request head have arrived, the head is not complete yet
        self._head_raw_bytes = 0  # bytes of chunks that were all head (a backstop for one endless header)
        self._head_parsed_bytes = 0  # request line and headers httptools handed over
        self._rejection: tuple[int, str, str] | None = None
        self._body_clock: _BodyClock | None = None
        self._lingering = False  # an error was sent: input is discarded until the client closes or time's up

    # ------------------------------------------------------------------------------ connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        head_was_arriving = self._head_begun
        super().data_received(data)
        if self._lingering or self.transport.is_closing():
            return
        if self._head_begun and head_was_arriving:
            # A head still incomplete after a whole chunk: all of it was head. (The chunk a head starts in
            # may hold the previous body's tail, so it is left out: the limit holds to within one read.)
            self._head_raw_bytes += len(data)
            if self._head_raw_bytes > self.limits.max_head_bytes:
                self._refuse_head(431, "request_header_fields_too_large", "request head")
                self.send_400_response("request head too large")
                return
        clock = self._body_clock
        if clock is not None and clock.timer is None and not clock.timed_out:
            clock.timer = self.loop.call_at(clock.deadline(self.limits), self._check_body_clock, clock)

    # ---------------------------------------------------------------------------------- parser events

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._head_raw_bytes = 0
        self._head_parsed_bytes = 0
        if self.cycle is None or self.cycle.response_complete:
            self._start_head_clock()

    def on_url(self, url: bytes) -> None:
        self._head_parsed_bytes += len(url)
        if self._head_parsed_bytes > self.limits.max_head_bytes:
            raise _HeadTooLarge(self._refuse_head(414, "uri_too_long", "request line"))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_parsed_bytes > self.limits.max_head_bytes:
            raise _HeadTooLarge(self._refuse_head(431, "request_header_fields_too_large", "request head"))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_begun = False
        self._stop_head_clock()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle is previous:  # an upgrade request: no cycle was made
            return
        now = self.loop.time()
        clock = _BodyClock(cycle=cycle, started=now, last_byte=now)
        self._body_clock = clock
        cycle.receive = self._timed_receive(cycle.receive, clock)  # type: ignore[method-assign]

    def on_body(self, body: bytes) -> None:
        if self._body_clock is not None:
            self._body_clock.received += len(body)
            self._body_clock.last_byte = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_begun and not self._closing():
            self._start_head_clock()  # the next head began arriving during the response: its clock starts now

    # ------------------------------------------------------------------------------------- responses

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for anything httptools cannot parse; answer in the one error shape."""
        status, type_, message = self._rejection or (400, "invalid_request", f"malformed HTTP request: {msg}")
        self._send_error_and_close(status, type_, message)

    def _send_error_and_close(self, status: int, type_: str, message: str) -> None:
        """Write a complete JSON error response and close; silences a request the app is still handling."""
        self._stop_head_clock()
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # mid-response: a second status line would corrupt it
                self.transport.close()
                return
            cycle.disconnected = True  # the app's later sends are dropped, its receive() sees a disconnect
            cycle.message_event.set()
        body = ErrorBody(error=ErrorDetail(type=type_, message=message)).model_dump_json().encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"x-request-id: " + uuid.uuid4().hex.encode() + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Send FIN after the response, discard what the client still sends for a moment, then close.

        Closing a socket with unread input makes the kernel answer RST, and a client still sending (a long
        URL, a body) may then lose the error response it has not read yet (what nginx's lingering_close
        avoids). The client's own close ends it sooner: uvicorn closes on EOF.
        """
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    # ----------------------------------------------------------------------------------------- clocks

    def _closing(self) -> bool:
        return self._lingering or self.transport.is_closing()

    def _refuse_head(self, status: int, type_: str, what: str) -> str:
        """Record the answer for an oversized head (sent by ``send_400_response``); returns its message."""
        message = f"{what} exceeds {self.limits.max_head_bytes} bytes (ETCHR_HTTP_MAX_HEAD_BYTES)"
        self._rejection = (status, type_, message)
        return message

    def _start_head_clock(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._closing():
            return
        self.logger.info(
            "%s: closing a connection whose request head was not complete after %g s",
            _peer(self.client),
            self.limits.header_timeout_s,
        )
        if not self._head_begun:  # a connection that never sent a byte: nobody to answer
            self.transport.close()
            return
        self._send_error_and_close(
            408,
            "request_timeout",
            f"request head not received within {self.limits.header_timeout_s:g} s "
            "(ETCHR_HTTP_HEADER_TIMEOUT_S)",
        )

    def _check_body_clock(self, clock: _BodyClock) -> None:
        clock.timer = None
        if clock is not self._body_clock or self._closing():
            return
        if self.flow.read_paused:
            # We stopped reading (the app has not taken what came, or a pipelined request waits its turn):
            # the client cannot send, so it is not slow. Its budget restarts, with what it sent so far paid.
            clock.forgive(self.loop.time(), self.limits)
        deadline = clock.deadline(self.limits)
        if self.loop.time() < deadline:  # bytes came since the timer was set: the deadline moved
            clock.timer = self.loop.call_at(deadline, self._check_body_clock, clock)
            return
        clock.timed_out = True
        self.logger.info(
            "%s: request body too slow (%d bytes in %.1f s); answering 408 and closing",
            _peer(self.client),
            clock.received,
            self.loop.time() - clock.started,
        )
        cycle = clock.cycle
        if cycle.response_complete:  # the app answered without reading it all; nobody waits for the rest
            self.transport.close()
            return
        cycle.keep_alive = False  # close once the app's 408 (or whatever it is answering) is sent
        cycle.message_event.set()  # wake a receive() waiting for body: it raises RequestBodyTimeout
        clock.timer = self.loop.call_later(APP_ANSWER_GRACE_S, self._answer_for_app, clock)

    def _answer_for_app(self, clock: _BodyClock) -> None:
        clock.timer = None
        if clock.cycle.response_started or self._closing():
            return  # the app is answering; keep_alive is off, so the connection closes after it
        self._send_error_and_close(408, "request_timeout", RequestBodyTimeout(self.limits).detail)

    def _timed_receive(self, receive: ASGIReceiveCallable, clock: _BodyClock) -> ASGIReceiveCallable:
        """The app's ``receive``, raising :class:`RequestBodyTimeout` once the body clock ran out."""
        limits = self.limits

        async def timed_receive() -> ASGIReceiveEvent:
            message: ASGIReceiveEvent = await receive()
            if clock.timed_out and message["type"] == "http.request":
                raise RequestBodyTimeout(limits)
            return message

        return timed_receive


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


def protocol_class(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, carrying ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(
    app: Any,
    *,
    settings: CommonSettings,
    host: str,
    port: int,
    log_level: str = "info",
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn Config every ETCHR server runs with; ``options`` (``factory``, ...) pass through."""
    limits = HttpLimits.from_settings(settings)
    options.setdefault("timeout_graceful_shutdown", GRACEFUL_SHUTDOWN_S)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        http=protocol_class(limits),
        ws="none",
        # uvicorn hints int, but the value only reaches loop.call_later, which takes float seconds.
        timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=limits.max_head_bytes,
        **options,
    )


def run(
    app: Any, *, settings: CommonSettings, host: str, port: int, log_level: str = "info", **options: Any
) -> None:
    """Serve until SIGINT/SIGTERM, as ``uvicorn.run`` does; exit 3 (uvicorn's start-up failure) if it never
    started."""
    server = uvicorn.Server(
        uvicorn_config(app, settings=settings, host=host, port=port, log_level=log_level, **options)
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise SystemExit(3)
