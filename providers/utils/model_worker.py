"""One model's worker thread and bounded queue, shared by the local providers.

A local model decodes one job at a time, so each model owns a one-thread executor: jobs run in order,
at most ``max_queue`` wait behind the running one, and one more is refused with 503. A job carries a
``cancelled`` flag that the event loop sets (client gone, shutdown) and the worker reads between tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from llama_stack.apis.errors import ServiceUnavailableError


class Job:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        # Set from the event loop, read by the worker between tokens (a plain attribute: no lock needed).
        self.cancelled = False


class ModelWorker:
    """Runs ``run(job, fn, *args)`` for each submitted job on the model's own thread."""

    def __init__(self, model_id: str, provider_id: str, thread_prefix: str, max_queue: int, run: Callable[..., Any]):
        self.model_id = model_id
        self.provider_id = provider_id
        self.max_queue = max_queue
        self._run = run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{thread_prefix}[{model_id}]")
        # Jobs admitted and not finished: the running one plus those waiting. Event loop only.
        self.jobs: set[Job] = set()

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
            try:
                loop.call_soon_threadsafe(settle, done)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                pass

        future.add_done_callback(finished)
        return job, future

    def cancel_all(self) -> None:
        """Every running and waiting job stops at its next token (event loop)."""
        for job in self.jobs:
            job.cancelled = True

    def close(self) -> None:
        """Wait for the worker thread to finish (blocking: call off the event loop)."""
        self._executor.shutdown(wait=True)
