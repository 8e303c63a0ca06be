"""The first process of every job: ``python -m llama_stack.providers.inline.torch.jobs.supervise <job folder> -- <command>``.

It runs the job's command (the training process, or torchrun) and, when that ends, records how in
``exit.json``, so that a server started later can still say why a job ended without finishing ("exit code 1",
"killed by signal 9"). It holds the job's lock like the command does (the descriptor is inherited by both).

It ignores SIGTERM, SIGINT and SIGHUP: a cancel signals the whole process group, and the command decides how
to stop; this process waits for it to, then records its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from llama_stack.providers.inline.torch.training.spec import LOCK_FD_ENV, now, write_json

EXIT_FILE = "exit.json"


def _ignore(signum: int, frame: object) -> None:
    """A handler rather than SIG_IGN: handlers are reset in the command at exec, an ignored signal would not be."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(
            "usage: python -m llama_stack.providers.inline.torch.jobs.supervise <job folder> -- <command>",
            file=sys.stderr,
        )
        return 2
    job_dir, command = Path(argv[0]), argv[2:]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _ignore)
    lock_fd = int(os.environ[LOCK_FD_ENV]) if LOCK_FD_ENV in os.environ else None
    try:
        child = subprocess.Popen(command, cwd=job_dir, pass_fds=() if lock_fd is None else (lock_fd,))
    except OSError as exc:
        print(f"[supervise] cannot start {command[0]}: {exc}", flush=True)
        write_json(job_dir / EXIT_FILE, {"exit_code": 127, "error": str(exc), "ended_at": now().isoformat()})
        return 127
    started = now()
    code = child.wait()
    ended: dict[str, object] = {"started_at": started.isoformat(), "ended_at": now().isoformat()}
    if code < 0:
        ended["signal"] = -code
        print(f"[supervise] the training process was killed by signal {-code} ({_signal_name(-code)})", flush=True)
    else:
        ended["exit_code"] = code
        if code:
            print(f"[supervise] the training process exited with code {code}", flush=True)
    write_json(job_dir / EXIT_FILE, ended)
    return code if code >= 0 else 128 - code


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
