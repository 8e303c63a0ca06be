"""A model loaded on a thread of its own while the server already serves the others.

Importing torch and transformers takes seconds; a distribution's chat model must not wait for it (used by
inline::sentence-transformers and inline::reward-model).
A ``BackgroundLoad`` runs the blocking load on a daemon thread and tells the event loop how it went: its
``status`` is ``loading``, ``ready`` or ``failed`` (with the error), and ``wait()`` awaits the result.

The thread is a daemon so that stopping the server mid-load does not wait for the import to finish (an
executor thread would be joined at exit). Loads run one at a time: two models importing and initialising
at once would only compete for the same cores and memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Generic, Literal, TypeVar

from llama_stack.apis.errors import ServiceUnavailableError

T = TypeVar("T")
LoadStatus = Literal["ready", "loading", "failed"]
# What a caller still loading a model is told to wait (Retry-After, seconds): about what the rest of a
# typical load (torch imported, a small model read) takes.
LOADING_RETRY_AFTER_SECONDS = 2

log = logging.getLogger(__name__)

_ONE_LOAD_AT_A_TIME = threading.Lock()


class BackgroundLoad(Generic[T]):
    """``load()`` running on a daemon thread, its outcome delivered to the event loop that started it."""

    def __init__(self, name: str, load: Callable[[], T]):
        self.name = name
        self.started = time.monotonic()
        self.finished: float | None = None
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[T] = self._loop.create_future()
        self._abandoned = False
        threading.Thread(target=self._run, args=(load,), name=f"load[{name}]", daemon=True).start()

    @property
    def status(self) -> LoadStatus:
        if not self._future.done():
            return "loading"
        return "failed" if self._future.exception() is not None else "ready"

    @property
    def error(self) -> BaseException | None:
        """Why the load failed; None while it runs or once it succeeded."""
        return self._future.exception() if self._future.done() else None

    def seconds(self) -> float:
        """How long the load has run, or ran."""
        return (self.finished or time.monotonic()) - self.started

    def add_done_callback(self, callback: Callable[[BackgroundLoad[T]], None]) -> None:
        """Call ``callback(self)`` on the event loop once the load has succeeded or failed."""
        self._future.add_done_callback(lambda _: callback(self))

    def result(self) -> T:
        """The loaded object; only when ``status`` is ``ready``."""
        return self._future.result()

    def loaded(self, model_id: str, provider_id: str, failure: Callable[[BaseException], Exception]) -> T:
        """The loaded object for a request; a 503 with Retry-After while it loads, ``failure(error)`` raised once
        the load has failed."""
        if self.status == "loading":
            raise ServiceUnavailableError(
                f"model {model_id!r}: {provider_id} is still loading it ({self.seconds():.0f} s so far); "
                "retry after the Retry-After header's seconds",
                provider=provider_id,
                code="model_loading",
                retry_after=LOADING_RETRY_AFTER_SECONDS,
            )
        error = self.error
        if error is not None:
            raise failure(error)
        return self.result()

    async def wait(self) -> T:
        """The loaded object once there, or the load's error raised again."""
        return await asyncio.shield(self._future)

    def abandon(self, release: Callable[[T], None]) -> None:
        """Nobody wants the result any more (the provider shut down): ``release`` it if it still arrives."""
        self._abandoned = True

        def release_if_loaded(done: asyncio.Future[T]) -> None:
            if done.exception() is None:
                release(done.result())

        self._future.add_done_callback(release_if_loaded)

    def _run(self, load: Callable[[], T]) -> None:
        with _ONE_LOAD_AT_A_TIME:
            if self._abandoned:  # stopped before its turn came: not worth seconds of importing
                self._on_loop(partial(self._fail, RuntimeError(f"{self.name}: abandoned before it loaded")))
                return
            try:
                loaded = load()
            except Exception as exc:
                self._on_loop(partial(self._fail, exc))
            else:
                self._on_loop(partial(self._succeed, loaded))

    def _succeed(self, loaded: T) -> None:
        self.finished = time.monotonic()
        self._future.set_result(loaded)

    def _fail(self, error: Exception) -> None:
        self.finished = time.monotonic()
        self._future.set_exception(error)

    def _on_loop(self, call: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(call)
        except RuntimeError:  # the event loop is closed: the server stopped while this loaded
            log.debug("%s finished after its event loop closed; dropped", self.name)
