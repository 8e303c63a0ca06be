"""Start-up of ``llama-stack run <distribution>``: how long after launch a chat answers and an embedding is served.

Each run launches the server on a free port with empty storage and, from the moment of launch, polls it with
real HTTP clients, one thread each: GET /health until it answers, POST /inference/chat_completion until a chat
answers 200, and POST /inference/embeddings until an embedding answers 200 (a refused connection is tried again
after ``--poll`` seconds, a 503 while the embedding model loads after ``--busy-poll`` seconds: each refused
request costs the loading server a little, which a faster poll would add to what is measured). The server is stopped after each
run. The medians of ``--runs`` runs are printed with the fastest and slowest.

``--blocking`` also runs the distribution with its embedding providers' ``load_in_background: false`` (the
start waits for every model, as before background loading): the baseline the background load improves on.

    .venv/bin/python bench/startup.py                 # local, 5 runs
    .venv/bin/python bench/startup.py --runs 3 --blocking
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from llama_stack.config import builtin_distributions

PROMPT = "What is the capital of France?"
EMBEDDING_TYPES = ("inline::sentence-transformers",)
MILESTONES = ("health", "chat", "embedding")


@dataclass
class Models:
    chat: str
    embedding: str | None


@dataclass
class Timings:
    """Seconds from launch to each milestone, one list entry per run."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MILESTONES})

    def report(self, label: str) -> None:
        print(label)
        for milestone, runs in self.seconds.items():
            if runs:
                print(
                    f"  launch to first {milestone:<9}: median {statistics.median(runs):6.2f} s"
                    f"  (min {min(runs):.2f}, max {max(runs):.2f}; runs: {', '.join(f'{r:.2f}' for r in runs)})"
                )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distribution_file(name: str) -> Path:
    path = Path(name)
    return path if path.is_file() else builtin_distributions()[name]


def served_models(path: Path) -> Models:
    """The distribution's first chat model and first embedding model."""
    models = (yaml.safe_load(path.read_text()) or {}).get("models", [])
    chat = next((m["model_id"] for m in models if m.get("model_type", "llm") == "llm"), None)
    if chat is None:
        raise SystemExit(f"{path}: no llm model to chat with")
    embedding = next((m["model_id"] for m in models if m.get("model_type") == "embedding"), None)
    return Models(chat, embedding)


def blocking_copy(path: Path, directory: Path) -> Path:
    """The distribution with its embedding providers loading their models before the server starts."""
    config = yaml.safe_load(path.read_text())
    for entry in config.get("providers", {}).get("inference", []):
        if entry.get("provider_type") in EMBEDDING_TYPES:
            entry["config"] = {**(entry.get("config") or {}), "load_in_background": False}
    copy = directory / f"{config.get('name', 'distribution')}-blocking.yaml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


@dataclass
class Polling:
    refused: float  # seconds between tries while the port is closed
    busy: float  # seconds between tries while the server answers 503


def poll_until_ok(
    send: Callable[[httpx.Client], httpx.Response], url: str, poll: Polling, stop: threading.Event
) -> None:
    """Send until an answer is 200; a refused connection or a 503 is tried again, anything else is a failure."""
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            try:
                response = send(client)
            except httpx.TransportError:
                stop.wait(poll.refused)
                continue
            if response.status_code == 200:
                return
            if response.status_code != 503:
                raise RuntimeError(f"{response.request.url.path}: HTTP {response.status_code}: {response.text[:500]}")
            stop.wait(poll.busy)
    raise RuntimeError("stopped before an answer")


def senders(models: Models) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    chat = {"model": models.chat, "dialog": {"message": {"role": "user", "content": PROMPT}}, "max_tokens": 16}
    sends: dict[str, Callable[[httpx.Client], httpx.Response]] = {
        "health": lambda client: client.get("/health"),
        "chat": lambda client: client.post("/inference/chat_completion", json=chat),
    }
    if models.embedding is not None:
        embedding = {"model": models.embedding, "contents": [PROMPT]}
        sends["embedding"] = lambda client: client.post("/inference/embeddings", json=embedding)
    return sends


def one_run(path: Path, models: Models, poll: Polling, timeout: float) -> dict[str, float]:
    """Launch the server, time each milestone from the launch, stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sends = senders(models)
    reached: dict[str, float] = {}
    failures: list[str] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="llama-stack-startup-") as storage, tempfile.TemporaryFile() as log:
        command = [str(Path(sys.executable).with_name("llama-stack")), "run", str(path), "--port", str(port)]
        env = os.environ | {"LLAMA_STACK_STORAGE": storage}
        launched = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)

        def watch(milestone: str) -> None:
            try:
                poll_until_ok(sends[milestone], url, poll, stop)
                reached[milestone] = time.perf_counter() - launched
            except Exception as exc:
                failures.append(f"{milestone}: {exc}")

        threads = [threading.Thread(target=watch, args=(m,), daemon=True) for m in sends]
        for thread in threads:
            thread.start()
        deadline = launched + timeout
        try:
            for thread in threads:
                while thread.is_alive() and time.perf_counter() < deadline and process.poll() is None:
                    thread.join(0.1)
        finally:
            stop.set()
            process.terminate()
            process.wait(timeout=30)
        if failures or len(reached) < len(sends):
            log.seek(0)
            said = log.read().decode(errors="replace")[-3000:]
            problem = "; ".join(failures) or f"not reached in {timeout:.0f} s (exit status {process.returncode})"
            raise SystemExit(f"{path.name}: {problem}\nserver log:\n{said}")
    return reached


def measure(path: Path, models: Models, runs: int, poll: Polling, timeout: float) -> Timings:
    timings = Timings()
    for _ in range(runs):
        for milestone, seconds in one_run(path, models, poll, timeout).items():
            timings.seconds[milestone].append(seconds)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("distribution", nargs="?", default="local", help="a built-in name or a YAML file")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.02, help="seconds between tries while the port is closed")
    parser.add_argument("--busy-poll", type=float, default=0.1, help="seconds between tries answered 503")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a run may take")
    parser.add_argument("--blocking", action="store_true", help="also time the start that waits for every model")
    args = parser.parse_args()

    poll = Polling(args.poll, args.busy_poll)
    path = distribution_file(args.distribution)
    models = served_models(path)
    print(f"{path.name}: chat model {models.chat}, embedding model {models.embedding}; {args.runs} runs each")
    # Start-up is mostly CPU work (imports, process spawns): the machine's other load shows in the numbers.
    print(f"{os.cpu_count()} CPUs; load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    measure(path, models, args.runs, poll, args.timeout).report("models loading in the background:")
    if args.blocking:
        with tempfile.TemporaryDirectory() as directory:
            blocking = blocking_copy(path, Path(directory))
            measure(blocking, models, args.runs, poll, args.timeout).report("every model loaded before serving:")
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
