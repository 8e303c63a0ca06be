"""``llama-stack run`` as a real server process, for the tests that go through HTTP end to end."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import free_port, llama_stack_command, wait_for_health


@contextmanager
def serving(distribution: Path, *, health_timeout: float = 120.0) -> Iterator[str]:
    """Serve the distribution YAML on a free port; yield its base URL once /health answers.

    The server is stopped on the way out, whatever the test did; its stderr is kept so that a server
    that dies while starting fails the test with its own message (see ``wait_for_health``).
    """
    port = free_port()
    process = subprocess.Popen(
        [*llama_stack_command(), "run", str(distribution), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, timeout=health_timeout)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
