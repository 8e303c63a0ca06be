"""What the streamed-chat benchmarks share: spawning ``llama-stack run <distribution>``, streaming one chat
through it, and alternating runs against a direct, in-process call of the same model."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MODEL_ID = "smollm2-135m-instruct"
# Sent explicitly on both sides, so the server adds no system prompt of its own and the prompts match.
SYSTEM = "You are a storyteller."
PROMPT = "Write a long story about a dragon who learns to bake bread. Describe every step."

# A run: (tokens, seconds, seconds to the first token).
Run = tuple[int, float, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    distribution: str, port: int, storage: str, answer_timeout: float, poll: float
) -> tuple[subprocess.Popen[bytes], float, float]:
    """Spawn `llama-stack run <distribution>`; return the process, seconds to /health, seconds to a first chat answer."""
    command = [
        str(Path(sys.executable).with_name("llama-stack")),
        "run",
        distribution,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = os.environ | {"LLAMA_STACK_STORAGE": storage}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    health_at = None
    body = {
        "model": MODEL_ID,
        "dialog": {"message": {"role": "user", "content": "What is the capital of France?"}},
        "max_tokens": 16,
    }
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if health_at is None and httpx.get(f"{url}/health", timeout=1).status_code == 200:
                health_at = time.perf_counter() - start
            if health_at is not None:
                httpx.post(f"{url}/inference/chat_completion", json=body, timeout=answer_timeout).raise_for_status()
                return process, health_at, time.perf_counter() - start
        except httpx.TransportError:
            time.sleep(poll)


def stream_chat(client: httpx.Client, max_tokens: int) -> tuple[int, int, float, float | None]:
    """POST /inference/chat_completion with stream: true: chunks with text, the usage's completion_tokens (0
    without one), seconds, and seconds to the first text (None without any)."""
    body = {
        "model": MODEL_ID,
        "dialog": {
            "message": {"role": "user", "content": PROMPT},
            "message_history": [{"role": "system", "content": SYSTEM}],
        },
        "max_tokens": max_tokens,
        "stream": True,
    }
    start = time.perf_counter()
    chunks, usage_tokens, first = 0, 0, None
    with client.stream("POST", "/inference/chat_completion", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk["text_delta"]:
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
    return chunks, usage_tokens, time.perf_counter() - start, first


@dataclass
class Comparison:
    """Tokens/s and seconds to the first token of each run of each side, and the server's start-up times."""

    to_health: float
    to_answer: float
    direct: list[float] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    direct_first: list[float] = field(default_factory=list)
    served_first: list[float] = field(default_factory=list)

    def report(self, header: str, direct_label: str, served_label: str, first_width: int, distribution: str) -> None:
        """Print the header, the medians, each side's runs, their ratio and the start-up times; labels come padded alike."""
        d, s = statistics.median(self.direct), statistics.median(self.served)
        print(header)
        for label, rate, firsts, runs in (
            (direct_label, d, self.direct_first, self.direct),
            (served_label, s, self.served_first, self.served),
        ):
            first_ms = statistics.median(firsts) * 1000
            print(
                f"  {label}: {rate:8.1f} tokens/s   first token {first_ms:{first_width}.0f} ms   runs: {', '.join(f'{x:.1f}' for x in runs)}"
            )
        print(f"  {'ratio server/direct'.ljust(len(direct_label))}: {s / d:8.3f}   (target >= 0.97)")
        print(
            f"`llama-stack run {distribution}` to /health: {self.to_health:.2f} s; to its first chat answer: {self.to_answer:.2f} s"
        )


def server_vs_direct(
    distribution: str,
    load_direct: Callable[[], Callable[[int], Run]],
    server_run: Callable[[httpx.Client, int], Run],
    runs: int,
    max_tokens: int,
    *,
    verb: str,
    client_timeout: float,
    answer_timeout: float,
    poll: float,
) -> Comparison:
    """Start the server, load the direct side (``load_direct`` returns its run function), warm both once, then
    alternate ``runs`` runs of each; the server is stopped whatever happens."""
    port = free_port()
    with tempfile.TemporaryDirectory() as storage:
        process, to_health, to_answer = start_server(distribution, port, storage, answer_timeout, poll)
        result = Comparison(to_health, to_answer)
        try:
            direct_run = load_direct()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=client_timeout) as client:
                server_run(client, 8), direct_run(8)  # warm both sides once
                for _ in range(runs):
                    d_tokens, d_seconds, d_first = direct_run(max_tokens)
                    s_tokens, s_seconds, s_first = server_run(client, max_tokens)
                    if d_tokens != s_tokens:
                        print(f"note: direct {verb} {d_tokens} tokens, server {s_tokens}")
                    result.direct.append(d_tokens / d_seconds)
                    result.served.append(s_tokens / s_seconds)
                    result.direct_first.append(d_first)
                    result.served_first.append(s_first)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return result
