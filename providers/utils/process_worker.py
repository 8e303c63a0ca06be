"""A native engine in a child process of its own: an abort or a segfault in native code ends that process,
not the server.

The parent starts ``python -c`` (not a fork: the server has threads by then, and no main module is
re-imported as ``multiprocessing``'s spawn would) with two inherited descriptors:

- the *channel*, one end of a socket pair framed and pickled by ``multiprocessing.connection.Connection``.
  The parent sends ``(opener, argument)``; the child calls ``opener(argument)``, which loads the engine
  and returns ``(facts, handle)``, and answers ``Ready(facts)`` (or ``Raised``). Then the parent sends jobs,
  ``(seq, kind, payload)``, one at a time; the child runs ``handle(job, kind, payload, emit)`` and answers
  any number of streamed items (each ``emit(item)`` sends one, as it is) and then ``End(result)`` or
  ``Raised``.
- the *control* pipe, the parent's write end only: 8-byte job numbers to cancel. A thread in the child
  reads them, and the running job's ``cancelled`` turns true (the engine reads it between tokens). Its
  end of file means the parent is gone (even killed) or stopping it: the child exits at once, so none is
  orphaned. The child ignores SIGINT and SIGTERM, which a terminal or a service manager may send to the
  whole process group: the server stops it when its own shutdown is done.

When the child dies, the channel reaches end of file: the parent's :meth:`WorkerProcess.call` raises
:class:`WorkerCrashed`, naming the exit status (``killed by SIGABRT``). :class:`~.process_supervisor.
SupervisedWorker` turns that into errors for the requests and a reload.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from llama_stack.providers.utils.model_worker import Job

# What the child runs: the parent's import path first, so that the engine's modules resolve as they do here.
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from llama_stack.providers.utils.process_worker import serve; serve(int(sys.argv[2]), int(sys.argv[3]))"
)
_CANCEL_RECORD = 8  # bytes per job number on the control pipe (written whole: a pipe write this small is atomic)

# handle(job, kind, payload, emit) -> result, in the child.
Handler = Callable[[Any, str, Any, Callable[[Any], None]], Any]
Opener = Callable[[Any], tuple[Any, Handler]]


class Ready:
    __slots__ = ("facts",)

    def __init__(self, facts: Any):
        self.facts = facts


class End:
    __slots__ = ("result",)

    def __init__(self, result: Any):
        self.result = result


class Raised:
    """An exception of the child's, by type name and message (exception objects do not all pickle)."""

    __slots__ = ("message", "type_name")

    def __init__(self, exc: BaseException):
        self.type_name = type(exc).__name__
        self.message = str(exc)

    def rebuilt(self) -> Exception:
        """The same built-in exception (a ValueError stays one), or an EngineError naming the type."""
        cls = getattr(builtins, self.type_name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(self.message)
            except Exception:  # a built-in that wants other arguments
                pass
        return EngineError(self.type_name, self.message)


class EngineError(Exception):
    """An exception raised in the child whose type is not a built-in one; ``type_name`` is the child's."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.type_name = type_name


class WorkerCrashed(Exception):
    """The child process died; ``status`` says how (``killed by SIGABRT``, ``exited with status 1``)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


def exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


# ----------------------------------------------------------------------------------------------------
# The parent side


class WorkerProcess:
    """One child process serving one engine. ``start`` and ``call`` block: call them off the event loop,
    from one thread at a time (a model's worker thread)."""

    def __init__(self, process: subprocess.Popen[bytes], channel: Connection, control: int):
        self._process = process
        self._channel = channel
        self._control = control
        # Held while writing to the control pipe and while closing it: a closed descriptor's number may be
        # reused by another file at once, which a late cancel must not write into.
        self._control_lock = threading.Lock()
        self._seqs = itertools.count(1)
        self.facts: Any = None

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    def start(
        cls, opener: Opener, argument: Any, env: Mapping[str, str] | None = None, name: str = ""
    ) -> WorkerProcess:
        """Spawn the child and wait until ``opener(argument)`` has loaded the engine there. ``name`` ends the
        child's command line, for ``ps`` to show what it serves.

        Raises what the opener raised (rebuilt, see :class:`Raised`), or :class:`WorkerCrashed`.
        """
        ours, theirs = socket.socketpair()
        control_read, control_write = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path), str(theirs.fileno()), str(control_read), name],
                pass_fds=(theirs.fileno(), control_read),
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
            )
        except BaseException:
            ours.close()
            os.close(control_write)
            raise
        finally:
            theirs.close()
            os.close(control_read)
        worker = cls(process, Connection(ours.detach()), control_write)
        try:
            worker._channel.send((opener, argument))
            answer = worker._channel.recv()
        except (EOFError, OSError):
            raise WorkerCrashed(worker.stop()) from None
        except BaseException:
            worker.stop()
            raise
        if answer.__class__ is Raised:
            worker.stop()
            raise answer.rebuilt()
        worker.facts = answer.facts
        return worker

    def alive(self) -> bool:
        return self._process.poll() is None

    def call(self, job: Job, kind: str, payload: Any, emit: Callable[[Any], Any] | None = None) -> Any:
        """Run one job in the child: each item it streams goes to ``emit`` (this thread), its result is
        returned, its exception raised (rebuilt). Cancelling ``job`` (the event loop) reaches the child
        through the control pipe. Raises :class:`WorkerCrashed` when the child dies meanwhile."""
        seq = next(self._seqs)
        job.on_cancel = partial(self._cancel, seq)
        try:
            if job.cancelled:  # cancelled before the hook was in place
                self._cancel(seq)
            try:
                self._channel.send((seq, kind, payload))
                recv = self._channel.recv
                message = recv()
                while message.__class__ is not End and message.__class__ is not Raised:
                    if emit is not None:
                        try:
                            emit(message)
                        except Exception:  # nobody takes it any more (the event loop is closed)
                            emit = None
                            self._cancel(seq)
                    message = recv()  # read to the job's end, whatever: the next job's answer follows it
            except (EOFError, OSError):
                raise WorkerCrashed(self._reap()) from None
        finally:
            job.on_cancel = None
        if isinstance(message, Raised):
            raise message.rebuilt()
        return message.result

    def _cancel(self, seq: int) -> None:  # on the event loop
        with self._control_lock:
            if self._control < 0:
                return
            with contextlib.suppress(OSError):  # the child is gone: nothing runs any more
                os.write(self._control, seq.to_bytes(_CANCEL_RECORD, "little"))

    def _reap(self, timeout: float = 10.0) -> str:
        """How the child ended, once it has (killed if it lingers on after closing its channel)."""
        try:
            returncode = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            returncode = self._process.wait()
        return exit_status(returncode)

    def stop(self, timeout: float = 10.0) -> str:
        """End the child (it exits when its control pipe closes) and reap it; how it ended."""
        self._channel.close()
        with self._control_lock:
            if self._control >= 0:
                os.close(self._control)
                self._control = -1
        return self._reap(timeout)


# ----------------------------------------------------------------------------------------------------
# The child side


class _Control(threading.Thread):
    """Reads the job numbers to cancel; exits the process when the parent is gone."""

    def __init__(self, fd: int):
        super().__init__(name="control", daemon=True)
        self._fd = fd
        # The highest job number cancelled: only the running job (the highest sent) can be affected.
        self.cancelled = 0

    def run(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * _CANCEL_RECORD)
            except OSError:
                data = b""
            if not data:
                os._exit(0)  # the parent closed its end, or died: the engine has nobody to serve
            for start in range(0, len(data), _CANCEL_RECORD):
                seq = int.from_bytes(data[start : start + _CANCEL_RECORD], "little")
                if seq > self.cancelled:
                    self.cancelled = seq


class ChildJob:
    """What the engine's handler gets as its job: ``cancelled`` is read between tokens."""

    __slots__ = ("_control", "seq")

    def __init__(self, control: _Control, seq: int):
        self.seq = seq
        self._control = control

    @property
    def cancelled(self) -> bool:
        return self._control.cancelled >= self.seq


def serve(channel_fd: int, control_fd: int) -> None:
    """The child's main loop (see the module docstring)."""
    # Ctrl-C in a terminal (or a service manager's SIGTERM to the whole group) reaches this process too: the
    # server decides when it stops (after letting its streams finish), and closes the control pipe then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = _Control(control_fd)
    control.start()
    channel = Connection(channel_fd)
    try:
        opener, argument = channel.recv()
        facts, handle = opener(argument)
    except Exception as exc:
        _send_quietly(channel, Raised(exc))
        return
    if not _send_quietly(channel, Ready(facts)):
        return
    send = channel.send
    while True:
        try:
            seq, kind, payload = channel.recv()
        except (EOFError, OSError):
            return
        try:
            answer: Any = End(handle(ChildJob(control, seq), kind, payload, send))
        except Exception as exc:
            answer = Raised(exc)
        if not _send_quietly(channel, answer):
            return


def _send_quietly(channel: Connection, message: Any) -> bool:
    try:
        channel.send(message)
        return True
    except OSError:  # the parent is gone
        return False
