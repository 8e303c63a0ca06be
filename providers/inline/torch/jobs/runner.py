"""Jobs as processes: each in a folder of its own, started outside the server, watched through its lock.

Launch
    The server opens the job's ``lock``, takes a shared ``flock`` on it and starts ``supervise`` (which runs the
    training command) in a session of its own (``start_new_session``: its own process group, no terminal), the
    lock's descriptor handed over (``pass_fds``) and the server's copy closed at once. From then on the lock is
    held exactly as long as a process of the job lives; no pid is trusted to say so. stdout and stderr go to
    ``output.log``.
Scheduling
    At most ``max_concurrent_jobs`` jobs run; the others wait, ``scheduled``, in the order they came, in the
    job store (so a restart keeps the queue). A job is started when one ends: the server's own jobs wake the
    scheduler as their process exits, others (adopted after a restart) are noticed every ``poll_interval_s``.
Restarts
    Jobs are detached: a server stopping (or dying) leaves them running, and the next server adopts them through
    their lock and files. The job store says where each job is (``state``): ``scheduled`` (waiting),
    ``launching`` (being started: written before the process starts, so that a server dying in between does not
    start it twice), ``launched``, ``cancelled`` (cancelled before it started).
Cancel
    SIGTERM to the job's process group, then, once ``cancel_grace_s`` has passed with the lock still held,
    SIGKILL; the group is only signalled while the lock is held and the group's leader is this job's
    supervisor, so that a reused pid is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_stack.apis.errors import ConflictError
from llama_stack.providers.inline.torch.training.spec import (
    LOCK_FD_ENV,
    LOCK_FILE,
    OUTPUT_LOG,
    SPEC_FILE,
    STATUS_FILE,
    TRAIN_ROWS,
    VALIDATION_ROWS,
    JobSpec,
    job_is_running,
    now,
    write_json,
)
from llama_stack.providers.utils.training.jobs import TrainingJobRecord, TrainingJobStore

from .config import TorchPostTrainingConfig
from .supervise import EXIT_FILE

if TYPE_CHECKING:
    from .requests import PlannedJob

log = logging.getLogger(__name__)

SUPERVISOR = "llama_stack.providers.inline.torch.jobs.supervise"

# Job states in the store (details["state"]).
SCHEDULED, LAUNCHING, LAUNCHED, CANCELLED = "scheduled", "launching", "launched", "cancelled"
# How long a cancel waits, after SIGKILL, for the lock to be let go (the kernel ends killed processes at once).
KILL_WAIT_S = 15.0
_POLL_S = 0.05


# ------------------------------------------------------------------------------------------- folders
def folder_name(number: int, job_uuid: str) -> str:
    """A job's folder: its number, then the job_uuid made safe for a file name (the client chose it)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", job_uuid).strip(".-")[:48] or "job"
    return f"{number:06d}-{slug}"


def make_job_folder(jobs_dir: Path, job_uuid: str) -> Path:
    """A new, empty folder for a job, numbered after the highest number there."""
    numbers = [int(p.name[:6]) for p in jobs_dir.iterdir() if p.name[:6].isdigit()] if jobs_dir.exists() else []
    number = max(numbers, default=0) + 1
    while True:
        folder = jobs_dir / folder_name(number, job_uuid)
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            number += 1


def write_job_files(folder: Path, planned: PlannedJob) -> None:
    write_json(folder / SPEC_FILE, planned.spec)
    for name, rows in ((TRAIN_ROWS, planned.train), (VALIDATION_ROWS, planned.validation)):
        with (folder / name).open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------ commands
def training_command(config: TorchPostTrainingConfig, folder: Path, *, node_rank: int | str = 0) -> list[str]:
    """What runs a job on a node: the training module, under torchrun when the job has several processes."""
    module = ["-m", config.training_module, str(folder)]
    if config.processes == 1:
        return [sys.executable, *module]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(config.nproc_per_node)]
    if config.nnodes == 1:
        return [*launcher, "--standalone", *module]
    assert config.rdzv_endpoint is not None  # the config's validator checked it
    host, _, port = config.rdzv_endpoint.rpartition(":")
    # A static rendezvous: node 0 (this machine) is rank 0, which writes the job's status and checkpoints here.
    nodes = [
        "--nnodes",
        str(config.nnodes),
        "--node_rank",
        str(node_rank),
        "--master_addr",
        host,
        "--master_port",
        port,
    ]
    return [*launcher, *nodes, *module]


def join_command(config: TorchPostTrainingConfig, folder: Path) -> str | None:
    """What each other machine of a multi-node job runs (``<k>`` its node rank, 1 to nnodes - 1)."""
    if config.nnodes == 1:
        return None
    command = training_command(config, folder, node_rank="<k>")
    return " ".join(["python", *command[1:]])


def environment(config: TorchPostTrainingConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # Offline by default: the training process loads what the spec names, and fetches nothing.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = config.torch_threads
    if threads is None and config.nproc_per_node > 1:
        threads = max(1, (os.cpu_count() or 1) // config.nproc_per_node)  # the cores shared out between processes
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch(config: TorchPostTrainingConfig, folder: Path, on_exit: Callable[[int], None]) -> int:
    """Start the job in ``folder``; its supervisor's pid (also its process group). ``on_exit(returncode)`` is
    called from a thread of its own when the supervisor ends (it reaps it)."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        env = environment(config)
        env[LOCK_FD_ENV] = str(fd)
        command = [sys.executable, "-m", SUPERVISOR, str(folder), "--", *training_command(config, folder)]
        with (folder / OUTPUT_LOG).open("ab") as output:
            output.write(f"[server] starting: {' '.join(command[5:])}\n".encode())
            output.flush()
            process = subprocess.Popen(
                command,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                start_new_session=True,
                env=env,
            )
    finally:
        os.close(fd)  # the job's processes hold the lock now; the server must not

    def reap() -> None:
        on_exit(process.wait())

    threading.Thread(target=reap, name=f"reap-{folder.name}", daemon=True).start()
    return process.pid


def is_supervisor_of(pid: int, folder: Path) -> bool:
    """Whether ``pid`` is still this job's supervisor (its command line names the job's folder)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: the lock being held is the evidence
    return SUPERVISOR.encode() in cmdline and str(folder).encode() in cmdline


def signal_group(pgid: int, folder: Path, signum: int) -> bool:
    """Send ``signum`` to the job's process group while it is the job's; whether it was sent."""
    if not is_supervisor_of(pgid, folder):
        return False
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def describe_exit(returncode: int | None = None, exit_file: dict[str, Any] | None = None) -> str | None:
    """How the training process ended, from the supervisor's exit.json or the supervisor's own return code."""
    if exit_file:
        if exit_file.get("error"):
            return f"it could not be started: {exit_file['error']}"
        if exit_file.get("signal") is not None:
            return f"killed by signal {exit_file['signal']} ({_signal_name(int(exit_file['signal']))})"
        if exit_file.get("exit_code") is not None:
            return f"exit code {exit_file['exit_code']}"
    if returncode is not None:
        if returncode < 0:
            return f"killed by signal {-returncode} ({_signal_name(-returncode)})"
        return f"exit code {returncode}"
    return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def read_exit(folder: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((folder / EXIT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------ the runner
class JobRunner:
    """Starts scheduled jobs when there is room, notices ended ones, and cancels."""

    def __init__(self, config: TorchPostTrainingConfig, store: TrainingJobStore, jobs_dir: Path, provider: str):
        self.config = config
        self.store = store
        self.jobs_dir = jobs_dir
        self.provider = provider
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Jobs not known to have ended (scheduled, launching or launched), in the order they came.
        self._active: list[str] = [r.job_uuid for r in store.all() if self._may_be_active(r)]

    @staticmethod
    def _may_be_active(record: TrainingJobRecord) -> bool:
        return record.details.get("state") != CANCELLED and "ended_at" not in record.details

    def folder(self, record: TrainingJobRecord) -> Path:
        return self.jobs_dir / record.vendor_job_id

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.reconcile()
        self._task = asyncio.create_task(self._watch(), name=f"{self.provider}-jobs")

    async def close(self) -> None:
        """Stop watching; the jobs themselves keep running (the next server adopts them)."""
        # The flag, besides the cancel: on Python 3.11, wait_for swallows a cancel that comes as its wait ends.
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._loop = None

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.reconcile()
            except Exception:  # the watcher must outlive one bad job folder; it is logged, and the next round retries
                log.exception("%s: checking jobs failed", self.provider)

    def _exited(self, job_uuid: str, returncode: int) -> None:
        """From a reaper thread: the supervisor of a job this server started has ended."""
        loop = self._loop
        if loop is None:
            return

        def record() -> None:
            try:
                self.store.update(job_uuid, returncode=returncode)
            except Exception:
                log.exception("%s: recording the end of job %s failed", self.provider, job_uuid)
            self._wake.set()

        # A closed loop raises RuntimeError: the next server reads exit.json instead.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(record)

    # ------------------------------------------------------------------------------ scheduling
    def prepare(self, planned: PlannedJob) -> Path:
        """A new folder holding the job's spec and rows (safe to call from a thread)."""
        folder = make_job_folder(self.jobs_dir, planned.spec.job_uuid)
        try:
            write_job_files(folder, planned)
        except BaseException:
            _remove_tree(folder)
            raise
        return folder

    def add(self, planned: PlannedJob, folder: Path) -> TrainingJobRecord:
        """Record a prepared job (scheduled), then start it if there is room."""
        record = TrainingJobRecord(planned.spec.job_uuid, folder.name, planned.spec.kind, details={"state": SCHEDULED})
        try:
            self.store.add(record)
        except BaseException:
            _remove_tree(folder)
            raise
        self._active.append(record.job_uuid)
        log.info("%s: job %s scheduled in %s", self.provider, record.job_uuid, folder)
        self.reconcile()
        return self.store.get(record.job_uuid)

    def queue_position(self, job_uuid: str) -> int | None:
        """1 for the next job to start, and so on; None for a job that is not waiting."""
        waiting = [j for j in self._active if self.store.get(j).details.get("state") == SCHEDULED]
        return waiting.index(job_uuid) + 1 if job_uuid in waiting else None

    def reconcile(self) -> None:
        """Note the jobs that ended; start waiting jobs while fewer than max_concurrent_jobs run."""
        running = 0
        waiting = []
        for job_uuid in list(self._active):
            record = self.store.get(job_uuid)
            state = record.details.get("state")
            if state == SCHEDULED:
                waiting.append(record)
            elif state == LAUNCHING and not self._adopt(record):
                waiting.append(record)  # it never started: start it now
            elif job_is_running(self.folder(record)):
                running += 1
            else:
                self.store.update(job_uuid, ended_at=now().isoformat())
                self._active.remove(job_uuid)
                log.info("%s: job %s ended", self.provider, job_uuid)
        for record in waiting:
            if running >= self.config.max_concurrent_jobs:
                break
            self._start(record)
            running += 1

    def _adopt(self, record: TrainingJobRecord) -> bool:
        """A job a server was starting when it stopped: whether its process started after all."""
        folder = self.folder(record)
        started = job_is_running(folder) or (folder / STATUS_FILE).exists() or (folder / EXIT_FILE).exists()
        if started:
            self.store.update(record.job_uuid, state=LAUNCHED, pid=_supervisor_pid(folder))
        return started

    def _start(self, record: TrainingJobRecord) -> None:
        folder = self.folder(record)
        self.store.update(record.job_uuid, state=LAUNCHING)
        job_uuid = record.job_uuid
        try:
            pid = launch(self.config, folder, lambda code: self._exited(job_uuid, code))
        except OSError as exc:
            log.error("%s: job %s could not be started: %s", self.provider, job_uuid, exc)
            self.store.update(
                job_uuid,
                state=LAUNCHED,
                launch_error=str(exc),
                launched_at=now().isoformat(),
                ended_at=now().isoformat(),
            )
            self._active.remove(job_uuid)
            return
        self.store.update(
            job_uuid,
            state=LAUNCHED,
            pid=pid,
            launched_at=now().isoformat(),
            device=self.config.device,
            processes=self.config.processes,
            nodes=self.config.nnodes,
            other_nodes_run=join_command(self.config, folder),
        )
        log.info("%s: job %s started (pid %d)", self.provider, job_uuid, pid)

    # ------------------------------------------------------------------------------------ cancel
    async def cancel(self, record: TrainingJobRecord) -> None:
        """Stop the job: a waiting one leaves the queue, a running one is signalled until its lock is free."""
        state = record.details.get("state")
        if state == SCHEDULED:
            self.store.update(record.job_uuid, state=CANCELLED, cancelled_at=now().isoformat())
            self._active.remove(record.job_uuid)
            log.info("%s: job %s cancelled before it started", self.provider, record.job_uuid)
            return
        folder = self.folder(record)
        if state != LAUNCHED or not job_is_running(folder):
            return  # it ended (or never started): nothing to stop
        if "cancelled_at" not in record.details:
            record = self.store.update(record.job_uuid, cancelled_at=now().isoformat())
        pid = record.details.get("pid") or _supervisor_pid(folder)
        if pid is None:
            raise ConflictError(
                f"job {record.job_uuid!r} runs, but its process group is not known (it was being started when a "
                f"server stopped): stop it by hand (its folder: {folder})",
                provider=self.provider,
                param="job_uuid",
            )
        # Shielded: a client that stops waiting does not leave a job half cancelled.
        await asyncio.shield(self._stop(record.job_uuid, int(pid), folder))

    async def _stop(self, job_uuid: str, pid: int, folder: Path) -> None:
        log.info("%s: cancelling job %s: SIGTERM to process group %d", self.provider, job_uuid, pid)
        signal_group(pid, folder, signal.SIGTERM)
        if await _until_ended(folder, self.config.cancel_grace_s):
            self._wake.set()
            return
        log.warning(
            "%s: job %s still runs %gs after SIGTERM: SIGKILL", self.provider, job_uuid, self.config.cancel_grace_s
        )
        signal_group(pid, folder, signal.SIGKILL)
        if not await _until_ended(folder, KILL_WAIT_S):
            log.error("%s: job %s holds its lock after SIGKILL (a process outside its group?)", self.provider, job_uuid)
        self._wake.set()


async def _until_ended(folder: Path, seconds: float) -> bool:
    """Poll the job's lock until it is free or ``seconds`` pass; whether it is free."""
    deadline = time.monotonic() + seconds
    while job_is_running(folder):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def _supervisor_pid(folder: Path) -> int | None:
    """The pid of a job's supervisor, from the process table (for a job whose record lacks it)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit() and is_supervisor_of(int(entry.name), folder):
            return int(entry.name)
    return None


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def load_spec(folder: Path) -> JobSpec | None:
    try:
        return JobSpec.model_validate_json((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
