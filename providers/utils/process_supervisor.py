"""One model's engine process, kept running: a crash fails the requests it touched and reloads the model.

A :class:`SupervisedWorker` belongs to a model's :class:`~.model_worker.ModelWorker`: every job goes
through :meth:`SupervisedWorker.run` on that worker's thread, which hands it to the current
:class:`~.process_worker.WorkerProcess`. When the process dies:

- the request it was serving fails with 502 (``EngineCrashedError``): "<engine> crashed (killed by SIGABRT)
  ...; the model is being reloaded". It may well have caused the crash, so it is not worth retrying as is;
- the requests queued behind it fail at once with 503 and ``Retry-After`` (about the reload's time): they
  did nothing wrong. Each job carries the crash count (``epoch``) current when it was admitted; a job
  admitted before the latest crash is one of these;
- the model is reloaded in a fresh process, at once after a first crash. Crashes in a row (no job finished
  in between) back off: the next reload waits 1 s, then 2, 4, ... up to 30 s; requests meanwhile get 503
  with ``Retry-After``, and the first one after the wait reloads the model.

The crash is logged with the exit status. A process that died while idle is noticed by the next job,
which reloads it and is then served.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from llama_stack.apis.errors import ProviderError, ServiceUnavailableError
from llama_stack.providers.utils.model_worker import Job, ModelWorker
from llama_stack.providers.utils.process_worker import Opener, WorkerCrashed, WorkerProcess

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0


class EngineCrashedError(ProviderError):
    """502: the engine process died while it served this request."""


def backoff_s(crashes_in_a_row: int) -> float:
    """How long to wait before reloading after this many crashes with no job finished between them."""
    return 0.0 if crashes_in_a_row <= 1 else min(2.0 ** (crashes_in_a_row - 2), _MAX_BACKOFF_S)


def no_backoff(crashes_in_a_row: int) -> float:
    return 0.0


class SupervisedWorker:
    """Runs jobs in a child process that is restarted after each crash (see the module docstring).

    ``engine`` names the native engine in errors ("llama.cpp"); ``opener(argument)`` loads it in the child.
    ``backoff`` maps crashes in a row to the wait before the next reload (:func:`backoff_s`; an engine whose
    crashes are each caused by a request, and which reloads in a moment, may pass ``no_backoff``).
    Everything but ``epoch`` (read on the event loop) and :meth:`close` happens on the model's worker thread.
    """

    def __init__(
        self,
        *,
        engine: str,
        model_id: str,
        provider_id: str,
        opener: Opener,
        argument: Any,
        worker: ModelWorker,
        env: Mapping[str, str] | None = None,
        backoff: Callable[[int], float] = backoff_s,
    ):
        self.engine = engine
        self.model_id = model_id
        self.provider_id = provider_id
        self.opener = opener
        self.argument = argument
        self._worker = worker
        self._env = env
        self._backoff = backoff  # crashes in a row -> seconds before the next reload
        self._process: WorkerProcess | None = None
        self.epoch = 0  # crashes that failed a running job; jobs admitted before the latest one are failed
        self._crashes_in_a_row = 0
        self._last_crash = ""
        self._reload_at = 0.0  # time.monotonic() before which no reload is tried
        self._load_s = 1.0  # how long the last load took: the Retry-After of the requests a crash fails
        self._closed = False

    @property
    def _who(self) -> str:
        return f"model {self.model_id!r} of {self.provider_id}"

    @property
    def pid(self) -> int | None:
        """The engine process's id (None while there is none)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Any:
        """Load the engine (blocking); the facts its opener reported. Raises what loading raised."""
        self._process = self._spawn()
        return self._process.facts

    def _spawn(self) -> WorkerProcess:
        started = time.monotonic()
        process = WorkerProcess.start(self.opener, self.argument, self._env, name=f"{self.engine}: {self._who}")
        self._load_s = time.monotonic() - started
        return process

    def run(self, job: Job, epoch: int, kind: str, payload: Any, emit: Callable[[Any], Any] | None = None) -> Any:
        """Run one job (on the model's worker thread); ``epoch`` is :attr:`epoch` as it was at admission."""
        if epoch != self.epoch:
            raise ServiceUnavailableError(
                f"{self._who}: {self.engine} crashed ({self._last_crash}) while this request waited; "
                "the model is being reloaded, retry",
                provider=self.provider_id,
                retry_after=self._retry_after(),
            )
        process = self._ready_process()
        try:
            result = process.call(job, kind, payload, emit)
        except WorkerCrashed as crash:
            self._crashed(process, crash.status, failed_a_job=True)
            raise EngineCrashedError(
                f"{self._who}: {self.engine} crashed ({crash.status}) while serving this request; "
                "the model is being reloaded",
                provider=self.provider_id,
            ) from None
        except BaseException:
            self._crashes_in_a_row = 0  # the process survived the job
            raise
        self._crashes_in_a_row = 0
        return result

    def _ready_process(self) -> WorkerProcess:
        process = self._process
        if process is not None:
            if process.alive():
                return process
            self._crashed(process, process.stop(), failed_a_job=False)  # died while idle
        wait = self._reload_at - time.monotonic()
        if wait > 0:
            raise ServiceUnavailableError(
                f"{self._who}: {self.engine} crashed {self._crashes_in_a_row} times in a row (last: "
                f"{self._last_crash}); the model is reloaded in {math.ceil(wait)} s",
                provider=self.provider_id,
                retry_after=math.ceil(wait),
            )
        return self._reload()

    def _reload(self) -> WorkerProcess:
        log.info("%s: reloading the model in a new %s process", self._who, self.engine)
        try:
            self._process = self._spawn()
        except WorkerCrashed as crash:
            self._count_crash(crash.status)
            log.error("%s: %s crashed again while reloading the model (%s)", self._who, self.engine, crash.status)
            raise ProviderError(
                f"{self._who}: {self.engine} crashed ({crash.status}) while reloading the model",
                provider=self.provider_id,
            ) from None
        except Exception as exc:
            self._count_crash(f"{type(exc).__name__}: {exc}")
            log.error("%s: reloading the model failed: %s: %s", self._who, type(exc).__name__, exc)
            raise ProviderError(
                f"{self._who}: {self.engine} could not reload the model: {type(exc).__name__}: {exc}",
                provider=self.provider_id,
            ) from None
        log.info("%s: model reloaded (%s process %d)", self._who, self.engine, self._process.pid)
        return self._process

    def _crashed(self, process: WorkerProcess, status: str, *, failed_a_job: bool) -> None:
        process.stop()
        self._process = None
        if failed_a_job:
            self.epoch += 1
        self._count_crash(status)
        delay = self._backoff(self._crashes_in_a_row)
        log.error(
            "%s: %s crashed (%s process %d %s)%s; reloading the model%s",
            self._who,
            self.engine,
            self.engine,
            process.pid,
            status,
            " while serving a request" if failed_a_job else " while idle",
            f" in {delay:g} s ({self._crashes_in_a_row} crashes in a row)" if delay else "",
        )
        if not delay and failed_a_job:
            # After the jobs queued now (they fail at once), before any admitted later.
            self._worker.call_soon(self._reload_if_gone)

    def _count_crash(self, status: str) -> None:
        self._last_crash = status
        self._crashes_in_a_row += 1
        self._reload_at = time.monotonic() + self._backoff(self._crashes_in_a_row)

    def _reload_if_gone(self) -> None:
        if self._process is None and not self._closed and time.monotonic() >= self._reload_at:
            self._reload()

    def _retry_after(self) -> int:
        return max(1, math.ceil(max(0.0, self._reload_at - time.monotonic()) + self._load_s))

    def close(self) -> None:
        """Stop the engine process (blocking; after the model's worker has finished its jobs)."""
        self._closed = True
        if self._process is not None:
            self._process.stop()
            self._process = None
