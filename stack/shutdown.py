"""Graceful shutdown of ``llama-stack run``: what SIGTERM and SIGINT set in motion.

1. The first signal stops the server listening (new connections are refused, idle keep-alive connections
   are closed) and answers any request that still reaches the app with a 503. Requests and streams in
   flight go on for ``server.shutdown_grace_seconds``.
2. When the grace period is over, or at a second signal, the requests still running are ended: each
   one's work is cancelled (a provider's stream is closed, so its generation stops), then a stream gets a
   last ``event: error`` frame (503, "the server is shutting down") and a request that had not answered
   yet gets a 503 JSON error. The response ends properly; the client never sees a cut connection.
3. Then every provider's ``shutdown()`` runs (faiss saves its indexes, local models are freed) and the
   process exits 0. A third signal kills the process at once, without the providers' shutdown.

uvicorn catches these signals itself and, after its own shutdown, raises them again, which killed the
process (SIGTERM) or interrupted it (SIGINT) before the providers' shutdown could run; and it cancels the
requests still running after its graceful timeout, which cut streams without a last frame. Here the
signals are the loop's, uvicorn's handling is switched off, and uvicorn's timeout is only a backstop that
fires after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llama_stack.apis.errors import ServiceUnavailableError

from .server import error_response

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# uvicorn cancels what is still running this long after the grace period, should ending the requests
# hang (a provider's stream that does not close).
BACKSTOP_SECONDS = 5.0


def shutting_down_error() -> ServiceUnavailableError:
    # A retry may succeed against another replica, or against this server once it is back.
    return ServiceUnavailableError(
        "The server is shutting down; retry the request", code="server_shutting_down", retry_after=1
    )


class GracefulShutdown:
    """Counts SIGTERM/SIGINT and drives the three steps of the module docstring."""

    def __init__(self, grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.signals_received = 0
        self.draining = False  # a signal came: no new requests
        self.ending = False  # the grace period is over: requests still running are ended
        self._stop: Callable[[], object] | None = None
        self._running: set[asyncio.Future[None]] = set()
        self._grace_timer: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
            if self._grace_timer is not None:
                self._grace_timer.cancel()

    def on_first_signal(self, stop: Callable[[], object]) -> None:
        """What the first signal stops besides the requests: the start-up, then the server's listening.

        What ``stop`` returns is ignored (a task's ``cancel`` answers whether it was cancelled)."""
        self._stop = stop
        if self.draining:
            stop()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` with its requests refused while draining and ended when the grace period is over."""
        return _EndedOnShutdown(app, self)

    @property
    def uvicorn_timeout(self) -> int:
        """uvicorn's graceful-shutdown timeout, in whole seconds as its config declares it; rounded up, so that
        it never fires before the grace period and the backstop are over."""
        return math.ceil(self.grace_seconds + BACKSTOP_SECONDS)

    def track(self, request: asyncio.Future[None]) -> None:
        """A request in flight, to be cancelled when the requests are ended."""
        self._running.add(request)
        request.add_done_callback(self._running.discard)

    def _on_signal(self, sig: int) -> None:
        self.signals_received += 1
        name = signal.Signals(sig).name
        if self.signals_received == 1:
            self.begin(name)
        elif self.signals_received == 2:
            self.end_requests(f"{name} again")
        else:
            # The way out when a provider's shutdown hangs: die of the signal, as without any handler.
            log.warning("%s a third time: exiting without shutting the providers down", name)
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    def begin(self, why: str) -> None:
        """Step 1: refuse new requests, stop what on_first_signal named, end the rest after the grace period."""
        if self.draining:
            return
        log.info(
            "%s: shutting down; no new connections; requests in flight (%d) have %gs to finish (a second signal ends them now)",
            why,
            len(self._running),
            self.grace_seconds,
        )
        self.draining = True
        self._grace_timer = asyncio.get_running_loop().call_later(
            self.grace_seconds, self.end_requests, "the grace period is over"
        )
        if self._stop is not None:
            self._stop()

    def end_requests(self, why: str) -> None:
        """Step 2: end the requests still running, each with a 503 (a stream with an ``error`` event)."""
        if self.ending:
            return
        self.ending = True
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        if self._running:
            log.warning("%s: ending the requests still running (%d)", why, len(self._running))
        for task in self._running:
            task.cancel()


class _Response:
    """What the app has sent of its response so far."""

    def __init__(self, send: Send):
        self._send = send
        self.started = False
        self.event_stream = False
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            self.event_stream = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)


class _EndedOnShutdown:
    """Runs each request in a task of its own, which GracefulShutdown cancels when the grace period is over;
    then finishes the response here: the cancelled work cannot write any more, so the last frame is whole."""

    def __init__(self, app: ASGIApp, shutdown: GracefulShutdown):
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.shutdown.draining:
            await _error_response(scope, receive, send)
            return
        response = _Response(send)
        request = asyncio.ensure_future(self.app(scope, receive, response.send))
        self.shutdown.track(request)
        try:
            await asyncio.wait({request})
        except asyncio.CancelledError:  # uvicorn's backstop after the grace period: pass it on
            request.cancel()
            raise
        if request.cancelled() or (self.shutdown.ending and not response.complete):
            await _end(response, scope, receive, send)
            return
        request.result()  # the app's own error, for uvicorn to report


async def _end(response: _Response, scope: Scope, receive: Receive, send: Send) -> None:
    if not response.started:
        await _error_response(scope, receive, send)
    elif response.event_stream and not response.complete:
        body = json.dumps(shutting_down_error().to_body()).encode()
        await send({"type": "http.response.body", "body": b"event: error\ndata: " + body + b"\n\n", "more_body": False})
    # Any other response cut halfway stays cut (uvicorn closes the connection): ending its body here would
    # pass a truncated document off as a whole one.


async def _error_response(scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(shutting_down_error())(scope, receive, send)


class UvicornServer(uvicorn.Server):
    """uvicorn without its signal handling: GracefulShutdown owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop_listening(self) -> None:
        """Close the listening sockets and idle connections (on uvicorn's next tick, within 0.1 s)."""
        self.should_exit = True
