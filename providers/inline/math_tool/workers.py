"""The math worker processes: each evaluation runs in one, under a time limit that kills it.

sympy's work cannot be interrupted from inside (a big-integer power is one C call that never yields), so a
runaway evaluation is stopped by killing its process, which also frees whatever memory it grabbed. A
killed worker is replaced by the next evaluation that needs one. Workers start on first use, since each
imports sympy (about a second). An evaluation whose caller goes away (a client disconnecting) kills its
worker too: one still busy must never be handed the next expression.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from llama_stack.apis.errors import ProviderError, ServiceUnavailableError
from llama_stack.providers.utils.model_worker import Job
from llama_stack.providers.utils.process_worker import WorkerCrashed, WorkerProcess

from .config import MathToolConfig
from .evaluate import open_engine

log = logging.getLogger(__name__)


class MathWorkers:
    def __init__(self, config: MathToolConfig, provider_id: str):
        self.config = config
        self.provider_id = provider_id
        self._slots = asyncio.Semaphore(config.workers)
        self._waiting = 0
        self._idle: list[WorkerProcess] = []
        self._closed = False

    @property
    def settings(self) -> dict[str, Any]:
        """What a worker's opener gets (plain data: it is pickled to the child)."""
        return {
            "max_memory_mb": self.config.max_memory_mb,
            "max_output_chars": self.config.max_output_chars,
            "limits": {
                "max_length": self.config.max_expression_length,
                "max_depth": self.config.max_depth,
                "max_digits": self.config.max_digits,
            },
        }

    async def evaluate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The worker's answer (``exact``/``numeric``, ``refused`` or ``failed``); a timeout is ``failed``."""
        if self._slots.locked() and self._waiting >= self.config.max_queue:
            raise ServiceUnavailableError(
                f"provider '{self.provider_id}' (math) is busy: {self._waiting} evaluations are waiting",
                provider=self.provider_id,
                retry_after=self.config.timeout,
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await self._run(payload)
        finally:
            self._slots.release()

    async def _run(self, payload: dict[str, Any]) -> dict[str, Any]:
        worker = self._idle.pop() if self._idle else await self._started()
        call = asyncio.ensure_future(asyncio.to_thread(worker.call, Job(), "evaluate", payload))
        reusable = False
        try:
            done, _ = await asyncio.wait({call}, timeout=self.config.timeout)
            if not done:
                return {
                    "failed": f"the evaluation did not finish within {self.config.timeout:g} s and was stopped "
                    "(simplify the expression, or ask for a numeric answer)"
                }
            try:
                answer: dict[str, Any] = call.result()
            except WorkerCrashed as exc:
                log.warning("%s: a math worker died during an evaluation (%s)", self.provider_id, exc.status)
                return {"failed": f"the evaluation's worker process died ({exc.status}); it may have run out of memory"}
            reusable = True
            return answer
        finally:
            if not reusable:
                await self._discard(worker, call)
            elif self._closed:
                await asyncio.to_thread(worker.stop)
            else:
                self._idle.append(worker)

    async def _started(self) -> WorkerProcess:
        """A new worker; when the caller goes away while it starts, it joins the idle ones instead of leaking."""
        starting = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(self._keep)
            raise

    def _keep(self, starting: asyncio.Future[WorkerProcess]) -> None:
        if starting.cancelled() or starting.exception() is not None:
            return
        if self._closed:
            starting.result().stop(0.1)  # shut down meanwhile: nobody will take it
        else:
            self._idle.append(starting.result())

    async def _start(self) -> WorkerProcess:
        try:
            # A scrubbed environment: the worker needs none of the server's keys.
            env = {"PATH": os.environ.get("PATH", os.defpath)}
            return await asyncio.to_thread(WorkerProcess.start, open_engine, self.settings, env, "math")
        except (WorkerCrashed, ImportError, OSError) as exc:
            raise ProviderError(
                f"provider '{self.provider_id}' (math) could not start its worker: {exc}", provider=self.provider_id
            ) from None

    async def _discard(self, worker: WorkerProcess, call: asyncio.Future[Any]) -> None:
        """Kill the worker, let the thread waiting on it see its end, and reap it."""
        if worker.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        # Shielded: a caller cancelled meanwhile must not leave the process unreaped.
        await asyncio.shield(self._reap(worker, call))

    @staticmethod
    async def _reap(worker: WorkerProcess, call: asyncio.Future[Any]) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await call  # WorkerCrashed, at once: the channel reached end of file
        await asyncio.to_thread(worker.stop, 1.0)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for worker in idle:
            await asyncio.to_thread(worker.stop, 1.0)
