"""Runs Python code in a sandbox process: namespaces, resource limits, captured output, a wall clock.

The server side of the sandbox. Each run gets a private temporary directory (deleted after) and a process
tree started with ``unshare`` (a new network, mount, pid, ipc and uts namespace; in ``userns`` isolation a
user namespace too) whose first process is ``launcher.py``: see that module for what happens inside. The
run is awaited with asyncio (the server keeps serving), bounded by a wall clock that kills the whole
process group, and at most ``max_concurrency`` runs go at once.

Which isolation works is probed once, when the provider is built, by running a tiny program through the
real machinery and checking that it sees no network interface but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .config import CodeInterpreterConfig, MiB

log = logging.getLogger(__name__)

Mode = Literal["root", "userns", "none"]
LAUNCHER = Path(__file__).with_name("launcher.py")
SANDBOX_DIR = "/sandbox"
STATUS_FD_IN_CHILD = 3
SETUP_FAILED = 125
READ_CHUNK = 64 * 1024
DRAIN_GRACE_S = 2.0
PROBE_TIMEOUT_S = 30.0
MAX_WALK_ENTRIES = 1000
NAMESPACES = ("--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child")
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr")
SYSTEM_FILES = ("/etc/ld.so.cache",)
PROBE_CODE = "import socket\nprint(' '.join(sorted(name for _, name in socket.if_nameindex())))\n"


class SandboxUnavailable(Exception):
    """No isolation works here (and running without it is not allowed); the message says why."""


class SandboxSetupError(Exception):
    """The sandbox could not be set up for a run; the code never ran."""


class SandboxBusy(Exception):
    """Every run slot is taken and the queue is full."""


@dataclass(frozen=True)
class Layout:
    """What the sandbox's root holds: read-only binds, symlinks, and paths covered inside the binds."""

    python: str
    binds: tuple[str, ...]
    links: dict[str, str]
    hide: tuple[str, ...]


@dataclass
class Captured:
    data: bytes = b""
    total: int = 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


@dataclass(frozen=True)
class WrittenFile:
    name: str
    size: int
    data: bytes | None  # None: over the limits, reported but not returned


@dataclass
class RunOutcome:
    stdout: Captured
    stderr: Captured
    exit_code: int | None  # negative: killed by that signal; None: no status (killed by the wall clock)
    timed_out: bool
    duration_s: float
    files: list[WrittenFile] = field(default_factory=list)
    files_skipped: int = 0


# ----------------------------------------------------------------------------------------------- layout
async def discover_layout(python: str, hidden: Sequence[str]) -> Layout:
    """The interpreter's installation (its prefixes, resolved) and the system directories it needs."""
    found = shutil.which(python)
    if found is None:
        raise SandboxUnavailable(f"python interpreter {python!r} not found")
    script = (
        "import json, os, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
        "sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]))"
    )
    proc = await asyncio.create_subprocess_exec(
        found, "-I", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={}
    )
    out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    if proc.returncode != 0:
        raise SandboxUnavailable(f"{found} -I failed: {err.decode(errors='replace')[-500:]}")
    return layout_for(found, json.loads(out), hidden)


def layout_for(python: str, prefixes: Sequence[str], hidden: Sequence[str]) -> Layout:
    """The interpreter's prefixes (resolved), the system directories and links it needs, and the hidden
    paths that lie inside them."""
    links = {p: os.readlink(p) for p in TOP_LEVEL if os.path.islink(p)}
    candidates = [p for p in TOP_LEVEL if os.path.isdir(p) and p not in links]
    candidates += [p for p in SYSTEM_FILES if os.path.isfile(p)]
    candidates += [os.path.realpath(p) for p in prefixes]
    binds = _outermost(candidates)
    if "/" in binds:
        raise SandboxUnavailable(
            f"{python}'s installation is the whole filesystem (prefix /); it cannot be mounted alone"
        )
    resolved = {os.path.realpath(h) for h in hidden}
    hide = tuple(sorted(h for h in resolved if any(_within(h, b) for b in binds)))
    return Layout(python=os.path.abspath(python), binds=binds, links=links, hide=hide)


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _outermost(paths: Sequence[str]) -> tuple[str, ...]:
    """Each path once, leaving out those inside another (a recursive bind of the outer one holds them)."""
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(_within(path, outer) for outer in kept):
            kept.append(path)
    return tuple(kept)


# ---------------------------------------------------------------------------------------------- sandbox
class Sandbox:
    def __init__(self, config: CodeInterpreterConfig, layout: Layout, mode: Mode, unshare: str | None):
        self.config = config
        self.layout = layout
        self.mode = mode
        self._unshare = unshare
        self._slots: asyncio.Queue[int] | None = None
        self._waiting = 0

    @classmethod
    async def create(cls, config: CodeInterpreterConfig, hidden: Sequence[str]) -> Sandbox:
        """Probe the isolation modes in order and keep the first that works."""
        import sys

        layout = await discover_layout(config.python or sys.executable, [*hidden, *config.hidden_paths])
        unshare = shutil.which("unshare")
        failures: list[str] = []
        for mode in _candidates(config):
            if unshare is None:
                failures.append("unshare: not installed (util-linux)")
                break
            sandbox = cls(config, layout, mode, unshare)
            reason = await sandbox._probe()
            if reason is None:
                return sandbox
            failures.append(f"{mode}: {reason}")
        if config.allow_no_network_isolation:
            log.warning(
                "code interpreter runs WITHOUT namespaces (network and filesystem not isolated): %s",
                "; ".join(failures),
            )
            return cls(config, layout, "none", None)
        raise SandboxUnavailable(
            "no sandbox isolation works on this machine (" + "; ".join(failures) + "). Allow user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces), run the server as root, or "
            "set allow_no_network_isolation: true to run code with resource limits only"
        )

    async def _probe(self) -> str | None:
        try:
            outcome = await self.run(PROBE_CODE, timeout_s=PROBE_TIMEOUT_S)
        except SandboxSetupError as exc:
            return str(exc)
        if outcome.timed_out or outcome.exit_code != 0:
            return f"a probe run ended with {outcome.exit_code}: {outcome.stderr.data.decode(errors='replace')[-300:]}"
        interfaces = outcome.stdout.data.decode().split()
        if interfaces != ["lo"]:
            return f"the sandbox still sees network interfaces {interfaces}"
        return None

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[int]:
        if self._slots is None:
            self._slots = asyncio.Queue()
            for slot in range(self.config.max_concurrency):
                self._slots.put_nowait(slot)
        if self._slots.empty() and self._waiting >= self.config.max_queued:
            raise SandboxBusy(f"{self.config.max_concurrency} runs going and {self._waiting} waiting")
        self._waiting += 1
        try:
            slot = await self._slots.get()
        finally:
            self._waiting -= 1
        try:
            yield slot
        finally:
            self._slots.put_nowait(slot)

    async def run(self, code: str, *, timeout_s: float | None = None) -> RunOutcome:
        async with self._slot() as slot:
            run_dir = Path(tempfile.mkdtemp(prefix="llama-stack-code-"))
            try:
                return await self._run_in(run_dir, slot, code, timeout_s or self.config.timeout_s)
            finally:
                await asyncio.to_thread(_remove_tree, run_dir)

    async def _run_in(self, run_dir: Path, slot: int, code: str, timeout_s: float) -> RunOutcome:
        work, root = run_dir / "work", run_dir / "root"
        work.mkdir()
        root.mkdir()
        uid = self.config.uid_base + slot
        if self.mode == "root":
            os.chown(work, uid, uid)  # the only place the run's own uid may write
        status_read, status_write = os.pipe()
        os.set_blocking(status_read, False)
        try:
            started = time.monotonic()
            proc = await self._start(self._spec(run_dir, uid, status_write), status_write)
        finally:
            os.close(status_write)
        try:
            outcome = await self._supervise(proc, code, timeout_s)
            outcome.duration_s = time.monotonic() - started
            status = _read_status(status_read)
        finally:
            _kill_group(proc.pid)  # what the code left in the group (mode none: processes outside any namespace)
            os.close(status_read)
        if "setup_error" in status:
            raise SandboxSetupError(status["setup_error"])
        exit_code = status.get("exit_code", proc.returncode)
        if not outcome.timed_out and isinstance(exit_code, int):
            outcome.exit_code = exit_code
        outcome.files, outcome.files_skipped = await asyncio.to_thread(
            collect_files, work, self.config.max_attachments, self.config.max_attachment_bytes
        )
        return outcome

    def _spec(self, run_dir: Path, uid: int, status_fd: int) -> dict[str, object]:
        config = self.config
        work = str(run_dir / "work") if self.mode == "none" else SANDBOX_DIR
        python_dir = os.path.dirname(self.layout.python)
        return {
            "mode": self.mode,
            "root": str(run_dir / "root"),
            "work": str(run_dir / "work"),
            "binds": list(self.layout.binds),
            "links": self.layout.links,
            "hide": list(self.layout.hide),
            "python": self.layout.python,
            "uid": uid,
            "gid": uid,
            "status_fd": status_fd,
            "limits": {
                "cpu_s": config.cpu_time_s,
                "address_space": config.memory_mb * MiB,
                "processes": config.max_processes,
                "file_size": config.max_file_size_mb * MiB,
                "open_files": config.max_open_files,
            },
            "env": {
                "PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin",
                "HOME": work,
                "TMPDIR": work,
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            },
        }

    async def _start(self, spec: dict[str, object], status_fd: int) -> asyncio.subprocess.Process:
        prefix: list[str] = []
        if self.mode != "none":
            assert self._unshare is not None
            prefix = [self._unshare, *(("--user", "--map-root-user") if self.mode == "userns" else ()), *NAMESPACES]
        argv = [*prefix, self.layout.python, "-I", "-S", str(LAUNCHER), json.dumps(spec)]
        pipe = asyncio.subprocess.PIPE
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
            pass_fds=(status_fd,),
            start_new_session=True,  # its own process group: the wall clock kills all of it
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},  # nothing of the server's
            cwd="/",
        )

    async def _supervise(self, proc: asyncio.subprocess.Process, code: str, timeout_s: float) -> RunOutcome:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        cap = self.config.max_output_bytes
        readers = [asyncio.ensure_future(_drain(proc.stdout, cap)), asyncio.ensure_future(_drain(proc.stderr, cap))]
        timed_out = False
        try:
            await asyncio.wait_for(_feed_and_wait(proc, code.encode()), timeout_s)
        except asyncio.TimeoutError:
            timed_out = True
            _kill_group(proc.pid)  # unshare dies; --kill-child takes the namespace's pid 1, and all with it
            await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled (the client went away): stop the code too
                _kill_group(proc.pid)
            _, pending = await asyncio.wait(readers, timeout=DRAIN_GRACE_S)
            for reader in pending:
                reader.cancel()
        stdout, stderr = (r.result() if r.done() and not r.cancelled() else Captured() for r in readers)
        return RunOutcome(stdout, stderr, proc.returncode, timed_out, 0.0)


async def _feed_and_wait(proc: asyncio.subprocess.Process, code: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # setup failed before reading: status says
        proc.stdin.write(code)
        await proc.stdin.drain()
        proc.stdin.close()
    await proc.wait()


async def _drain(stream: asyncio.StreamReader, cap: int) -> Captured:
    """Keep the first ``cap`` bytes; read and count the rest so the writer never blocks on a full pipe."""
    captured = Captured()
    chunks: list[bytes] = []
    while chunk := await stream.read(READ_CHUNK):
        room = cap - captured.total
        if room > 0:
            chunks.append(chunk[:room])
        captured.total += len(chunk)
    captured.data = b"".join(chunks)
    return captured


def _read_status(fd: int) -> dict[str, object]:
    """The launcher's last JSON line; a setup error wins over the exit status that follows it."""
    try:
        raw = os.read(fd, 64 * 1024)
    except BlockingIOError:
        raw = b""
    status: dict[str, object] = {}
    for line in raw.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "setup_error" not in status:
                status.update(entry)
    return status


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(function: Callable[[str], object], target: str, _exc_info: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            function(target)

    shutil.rmtree(path, onerror=make_writable_and_retry)


def collect_files(work: Path, max_files: int, max_bytes: int) -> tuple[list[WrittenFile], int]:
    """Regular files the code left in its directory (not dot-files, no symlinks followed), bounded.

    Returns the files (over-size ones without data) and how many more were left out.
    """
    found: list[WrittenFile] = []
    skipped = 0
    seen = 0
    stack = [work]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_WALK_ENTRIES:
                return found, skipped + 1
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                if len(found) >= max_files:
                    skipped += 1
                    continue
                found.append(_read_written(Path(entry.path), work, max_bytes))
    return found, skipped


def _read_written(path: Path, work: Path, max_bytes: int) -> WrittenFile:
    name = str(path.relative_to(work))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return WrittenFile(name, 0, None)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return WrittenFile(name, info.st_size, None)
        data = file.read(max_bytes + 1)
    return WrittenFile(name, len(data), data if len(data) <= max_bytes else None)


def _candidates(config: CodeInterpreterConfig) -> list[Mode]:
    if config.isolation == "root":
        return ["root"]
    if config.isolation == "userns":
        return ["userns"]
    # As root, root mode first: it can give the code a fresh uid, which RLIMIT_NPROC counts (root, and a
    # user namespace mapping root to root, are exempt from it).
    return ["root", "userns"] if os.geteuid() == 0 else ["userns"]
