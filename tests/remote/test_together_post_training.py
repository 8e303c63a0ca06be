"""remote::together post-training against the fake Together API: SFT (LoRA, full), DPO, the limits pre-check,
refusals, a job's life (status, logs, artifacts, cancel, list), restarts, and one run through a real server.

The fake's jobs move only when a test calls ``together_fine_tunes.advance``, so every status is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import together_fine_tunes as fine_tunes
from fakes.together import API_KEY, error_body
from fakes.together_fine_tunes import LLAMA_8B, QWEN_72B
from fakes.vendor_server import Fault
from remote.conftest import FAST_RETRIES, write_distribution
from remote.training_support import TrainingProvider, data_url, inline_dataset, jsonl, training_config, training_request
from support import serving

from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
)
from llama_stack.apis.post_training import PostTrainingJobStatus
from llama_stack.client import LlamaStackClient
from llama_stack.providers.utils.datasets import DatasetReader, DatasetSourceConfig

TRAIN_ROWS = [
    {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]},
    {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
]
VALIDATION_ROWS = [{"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}]
PREFERENCE_ROWS = [
    {
        "input": {"messages": [{"role": "user", "content": "Say hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hi!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
]


def dataset(content: bytes) -> dict[str, Any]:
    return inline_dataset(content, {"messages": "dialog"})


TRAINING_CONFIG = training_config(batch_size=8)
OPTIMIZER_CONFIG = {"optimizer_type": "adamw", "lr": 1e-4, "lr_min": 1e-5, "weight_decay": 0.01}
LORA = {
    "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
    "apply_lora_to_mlp": True,
    "apply_lora_to_output": False,
    "rank": 16,
    "alpha": 32,
}


def sft(job_uuid: str, **overrides: Any) -> dict[str, Any]:
    """A LoRA SFT request; an override of a config changes only the keys it names."""
    fields = {
        "model": LLAMA_8B,
        "dataset": dataset(jsonl(TRAIN_ROWS)),
        "validation_dataset": dataset(jsonl(VALIDATION_ROWS)),
        "algorithm": "lora",
        "algorithm_config": LORA,
        "optimizer_config": OPTIMIZER_CONFIG,
        "training_config": TRAINING_CONFIG,
    }
    return training_request(job_uuid, fields, overrides, merge=True)


def dpo(job_uuid: str, finetuned_model: str, **overrides: Any) -> dict[str, Any]:
    preferences = dataset(jsonl(PREFERENCE_ROWS))
    fields = {
        "finetuned_model": finetuned_model,
        "dataset": preferences,
        "validation_dataset": preferences,
        "algorithm": "dpo",
        "algorithm_config": {"reward_scale": 1.0, "reward_clip": 5.0, "epsilon": 0.1, "gamma": 0.99},
        "optimizer_config": OPTIMIZER_CONFIG,
        "training_config": TRAINING_CONFIG,
    }
    return training_request(job_uuid, fields, overrides)


TOGETHER = TrainingProvider("together", "remote::together", "together-ft", API_KEY, fine_tunes.reset)
post_training = TOGETHER.providers
fresh, client = TOGETHER.fixtures()


def created(together: Any) -> list[dict[str, Any]]:
    return [r.json for r in together.calls("POST", "/v1/fine-tunes")]


def uploads(together: Any) -> list[dict[str, Any]]:
    return [r.form for r in together.calls("POST", "/v1/files/upload")]


# ---------------------------------------------------------------------------------------------- SFT
async def test_lora_sft_uploads_both_datasets_and_creates_the_job_with_mapped_hyperparameters(client, together):
    job = await client.post_training.supervised_fine_tune(
        **sft("lora-1", logger_config={"project": "llama-stack", "name": "run-1", "api_key": "wandb-secret"})
    )

    assert job.job_uuid == "lora-1"
    assert [r.query for r in together.calls("GET", "/v1/fine-tunes/models/limits")] == [{"model_name": LLAMA_8B}]
    train, validation = uploads(together)
    assert train["file"] == ("lora-1-train.jsonl", jsonl(TRAIN_ROWS))
    assert validation["file"] == ("lora-1-validation.jsonl", jsonl(VALIDATION_ROWS))
    assert train["purpose"] == validation["purpose"] == "fine-tune"
    (body,) = created(together)
    files = list(fine_tunes.state(together).files)
    assert body == {
        "model": LLAMA_8B,
        "training_file": files[-2],
        "validation_file": files[-1],
        "n_evals": 1,
        "n_epochs": 3,
        "n_checkpoints": 1,
        "batch_size": 8,
        "learning_rate": 1e-4,
        "weight_decay": 0.01,
        "lr_scheduler": {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": pytest.approx(0.1)}},
        "suffix": "lora-1",
        # q, k, v, output_proj (o_proj) and the MLP are every linear layer the model lists.
        "training_type": {
            "type": "Lora",
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.0,
            "lora_trainable_modules": "all-linear",
        },
        "training_method": {"method": "sft", "train_on_inputs": "auto"},
        "wandb_project_name": "llama-stack",
        "wandb_name": "run-1",
        "wandb_api_key": "wandb-secret",
    }
    assert fine_tunes.file_content(together, body["training_file"]) == jsonl(TRAIN_ROWS)


async def test_full_sft_from_a_file_under_the_allowed_roots_trains_every_weight(together, start_stack, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_bytes(jsonl(TRAIN_ROWS))
    client = await start_stack(
        post_training(together, n_evals=0, lr_scheduler_type="cosine", datasets={"file_roots": [str(data_dir)]})
    )

    file_dataset = {"columns": {"messages": "dialog"}, "content_url": (data_dir / "train.jsonl").as_uri()}
    await client.post_training.supervised_fine_tune(
        **sft("full-1", algorithm="full", dataset=file_dataset, training_config={"batch_size": 16})
    )

    (only_upload,) = uploads(together)  # n_evals 0: the validation set is not uploaded
    assert only_upload["file"] == ("full-1-train.jsonl", jsonl(TRAIN_ROWS))
    (body,) = created(together)
    assert body["training_type"] == {"type": "Full"}
    assert body["batch_size"] == 16
    assert body["lr_scheduler"]["lr_scheduler_type"] == "cosine"
    assert "validation_file" not in body and "n_evals" not in body


async def test_lora_on_some_attention_modules_names_them(client, together):
    await client.post_training.supervised_fine_tune(
        **sft("lora-qv", algorithm_config={"lora_attn_modules": ["q_proj", "v_proj"], "apply_lora_to_mlp": False})
    )
    assert created(together)[0]["training_type"]["lora_trainable_modules"] == "q_proj,v_proj"


async def test_lora_modules_the_model_does_not_have_are_refused(client, together):
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.supervised_fine_tune(
            **sft("lora-bad", algorithm_config={"lora_attn_modules": ["qkv_proj"]})
        )
    assert "cannot put LoRA adapters on qkv_proj" in refused.value.message
    assert "q_proj, k_proj, v_proj, o_proj" in refused.value.message
    assert created(together) == [] and uploads(together) == []


async def test_limits_violations_are_refused_with_every_problem_before_anything_is_uploaded(client, together):
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.supervised_fine_tune(
            **sft(
                "too-much",
                algorithm_config={"rank": 128},
                training_config={"batch_size": 64, "n_epochs": 50},
                optimizer_config={"lr": 0.5, "lr_min": 0.0},
            )
        )
    error = refused.value
    assert error.status == 400 and error.code == "outside_model_limits"
    assert {d["loc"] for d in error.details} == {
        "training_config.batch_size",
        "algorithm_config.rank",
        "optimizer_config.lr",
        "training_config.n_epochs",
    }
    assert "batch_size 64 is outside 8..32 for lora training" in error.message
    assert "LoRA rank 128 is outside 1..64" in error.message
    assert "learning rate 0.5 is outside 1e-06..0.01" in error.message
    assert "n_epochs 50 is above the maximum of 20" in error.message
    assert uploads(together) == [] and created(together) == []
    with pytest.raises(NotFoundError):
        await client.post_training.get_training_job_status(job_uuid="too-much")


async def test_full_training_of_a_lora_only_model_is_refused(client, together):
    with pytest.raises(
        BadRequestError, match=r"offers no full fine-tuning of 'Qwen/Qwen2\.5-72B-Instruct'; use algorithm 'lora'"
    ):
        await client.post_training.supervised_fine_tune(**sft("qwen-full", model=QWEN_72B, algorithm="full"))
    assert created(together) == []


async def test_a_model_together_does_not_fine_tune_is_refused_with_the_ones_it_does(client, together):
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.supervised_fine_tune(**sft("unknown-model", model="llama3_8b"))
    assert "cannot fine-tune model 'llama3_8b'" in refused.value.message
    assert LLAMA_8B in refused.value.message and "base_models" in refused.value.message
    assert created(together) == []


async def test_a_model_id_is_mapped_to_the_together_model_by_base_models(together, start_stack):
    client = await start_stack(post_training(together, base_models={"llama3_8b": LLAMA_8B}))
    await client.post_training.supervised_fine_tune(**sft("mapped", model="llama3_8b"))
    assert created(together)[0]["model"] == LLAMA_8B


async def test_qlora_and_dora_are_not_supported_unless_allowed_to_run_as_lora(client, together, start_stack):
    for algorithm in ("qlora", "dora"):
        with pytest.raises(NotSupportedError) as refused:
            await client.post_training.supervised_fine_tune(**sft(f"{algorithm}-1", algorithm=algorithm))
        assert refused.value.status == 501
        assert f"no {algorithm.upper()} fine-tuning" in refused.value.message
        assert "lora_for_qlora_and_dora" in refused.value.message
    assert together.requests == []

    lenient = await start_stack(post_training(together, lora_for_qlora_and_dora=True))
    await lenient.post_training.supervised_fine_tune(**sft("qlora-as-lora", algorithm="qlora"))
    assert created(together)[0]["training_type"]["type"] == "Lora"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer_config": {"optimizer_type": "sgd"}}, "AdamW only"),
        ({"hyperparam_search_config": {"lr": [1e-4, 1e-5]}}, "no hyperparameter search"),
        ({"logger_config": {"backend": "tensorboard"}}, "Weights & Biases only"),
        ({"logger_config": {"log_dir": "/tmp"}}, "cannot use: log_dir"),
        ({"optimizer_config": {"lr_min": 1e-3}}, "lr_min (0.001) must be between 0 and lr"),
    ],
)
async def test_what_together_cannot_do_is_refused_before_calling_it(client, together, overrides, message):
    with pytest.raises(BadRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await client.post_training.supervised_fine_tune(**sft("refused", **overrides))
    assert together.requests == []


async def test_datasets_are_checked_before_upload(client, together):
    broken = {"columns": {"text": "text"}, "content_url": data_url(b'{"text": "ok"}\nnot json\n')}
    with pytest.raises(BadRequestError, match=r"dataset\.content_url: line 2 is not JSON"):
        await client.post_training.supervised_fine_tune(**sft("broken", dataset=broken))
    on_disk = {"columns": {"text": "text"}, "content_url": "file:///etc/hostname"}
    with pytest.raises(
        BadRequestError, match=r"file:// datasets are refused: the provider has no datasets\.file_roots"
    ):
        await client.post_training.supervised_fine_tune(**sft("on-disk", validation_dataset=on_disk))
    assert uploads(together) == [] and created(together) == []


async def test_a_job_uuid_is_used_once(client, together):
    await client.post_training.supervised_fine_tune(**sft("once"))
    with pytest.raises(ConflictError) as refused:
        await client.post_training.supervised_fine_tune(**sft("once"))
    assert refused.value.status == 409 and "already exists" in refused.value.message
    assert len(created(together)) == 1


async def test_creating_a_job_is_not_retried_after_a_dropped_connection(client, together):
    together.fail("POST", "/fine-tunes", Fault("drop"))
    with pytest.raises(ProviderError, match="dropped the connection during POST /fine-tunes"):
        await client.post_training.supervised_fine_tune(**sft("dropped"))
    assert len(together.calls("POST", "/v1/fine-tunes")) == 1
    # Nothing was recorded, so the same job_uuid can be tried again.
    await client.post_training.supervised_fine_tune(**sft("dropped"))
    assert (
        await client.post_training.get_training_job_status(job_uuid="dropped")
    ).status == PostTrainingJobStatus.scheduled


async def test_the_callers_key_is_used_when_the_provider_has_none(together, start_stack, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    settings = {"url": together.url, **FAST_RETRIES}
    providers = {
        "post_training": [{"provider_id": "together-ft", "provider_type": "remote::together", "config": settings}]
    }
    anonymous = await start_stack(providers)
    with pytest.raises(AuthenticationError):
        await anonymous.post_training.supervised_fine_tune(**sft("no-key"))
    keyed = await start_stack(providers, provider_data={"together_api_key": API_KEY})
    await keyed.post_training.supervised_fine_tune(**sft("with-key"))
    assert {r.headers["authorization"] for r in together.requests} == {f"Bearer {API_KEY}"}


def test_the_fake_refuses_fine_tune_requests_outside_the_specs(together):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    misspelt = httpx.post(
        f"{together.url}/fine-tunes", json={"training_file": "f", "model": "m", "wieght_decay": 0.1}, headers=headers
    )
    not_a_file = httpx.post(f"{together.url}/files/upload", json={"purpose": "fine-tune"}, headers=headers)
    no_model = httpx.get(f"{together.url}/fine-tunes/models/limits", headers=headers)
    assert [r.status_code for r in (misspelt, not_a_file, no_model)] == [400, 400, 400]
    assert [v.split(": ", 1)[1] for v in together.violations] == [
        "wieght_decay: not a field the spec declares for POST /v1/fine-tunes",
        "expected a multipart/form-data upload with a file",
        "model_name: required by GET /fine-tunes/models/limits",
    ]
    together.violations.clear()


# ---------------------------------------------------------------------------------------------- DPO
async def test_dpo_from_a_hugging_face_repo_starts_from_its_weights(together, start_stack):
    client = await start_stack(post_training(together, preference_model=LLAMA_8B, dpo_beta=0.2))
    await client.post_training.preference_optimize(
        **dpo("dpo-hf", "https://huggingface.co/acme/llama-chat-sft/tree/v2")
    )

    (body,) = created(together)
    assert body["model"] == LLAMA_8B
    assert body["from_hf_model"] == "acme/llama-chat-sft" and body["hf_model_revision"] == "v2"
    assert body["training_method"] == {"method": "dpo", "dpo_beta": 0.2}
    assert "training_type" not in body  # Together's default: LoRA
    assert fine_tunes.file_content(together, body["training_file"]) == jsonl(PREFERENCE_ROWS)
    # The same dataset URL for validation is uploaded once.
    assert body["validation_file"] == body["training_file"] and len(uploads(together)) == 1


async def test_dpo_continues_from_a_checkpoint_of_an_earlier_job(client, together):
    await client.post_training.supervised_fine_tune(**sft("sft-base"))
    base = fine_tunes.job_by_suffix(together, "sft-base")
    fine_tunes.advance(together, base["id"])
    fine_tunes.advance(together, base["id"])
    (checkpoint,) = (await client.post_training.get_training_job_artifacts(job_uuid="sft-base")).checkpoints

    await client.post_training.preference_optimize(**dpo("dpo-continued", checkpoint.path))

    body = created(together)[-1]
    assert body["from_checkpoint"] == f"{base['id']}:50"
    assert body["model"] == LLAMA_8B  # the earlier job's model, asked from Together


async def test_dpo_continues_from_an_earlier_jobs_output_model(client, together):
    await client.post_training.supervised_fine_tune(**sft("sft-named"))
    output = fine_tunes.job_by_suffix(together, "sft-named")["model_output_name"]

    await client.post_training.preference_optimize(**dpo("dpo-named", f"{together.url}/models/{output}?step=50"))

    body = created(together)[-1]
    assert (body["model"], body["from_checkpoint"]) == (LLAMA_8B, f"{output}:50")


async def test_dpo_of_a_hugging_face_repo_together_fine_tunes_trains_that_model(client, together):
    await client.post_training.preference_optimize(**dpo("dpo-hf-own", f"https://huggingface.co/{LLAMA_8B}"))
    body = created(together)[0]
    assert body["model"] == LLAMA_8B and "from_hf_model" not in body and "from_checkpoint" not in body


async def test_dpo_batch_size_is_held_to_the_dpo_limit(together, start_stack):
    client = await start_stack(post_training(together, preference_model=LLAMA_8B))
    with pytest.raises(BadRequestError, match=r"batch_size 32 is outside 8\.\.16 for DPO lora training"):
        await client.post_training.preference_optimize(
            **dpo("dpo-big", "https://example.com/m", training_config={**TRAINING_CONFIG, "batch_size": 32})
        )
    assert created(together) == []


async def test_dpo_without_a_model_to_start_from_is_refused(client, together):
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.preference_optimize(**dpo("dpo-nowhere", "https://example.com/some-model"))
    assert "names neither a Hugging Face repo" in refused.value.message and "preference_model" in refused.value.message
    with pytest.raises(BadRequestError, match="set preference_model"):
        await client.post_training.preference_optimize(**dpo("dpo-hf-alone", "https://huggingface.co/acme/unknown"))
    assert created(together) == []


async def test_grpo_is_not_supported_by_together(client, together):
    request = dpo(
        "grpo-1", "https://huggingface.co/acme/m", algorithm="grpo", algorithm_config={"reward_functions": {"f": 1.0}}
    )
    with pytest.raises(NotSupportedError, match=r"no GRPO fine-tuning .* remote::emissary"):
        await client.post_training.preference_optimize(**request)
    assert together.requests == []


# ------------------------------------------------------------------------------------ job lifecycle
async def test_status_follows_the_job_with_timestamps_and_checkpoints(client, together):
    await client.post_training.supervised_fine_tune(**sft("life"))
    job_id = fine_tunes.job_by_suffix(together, "life")["id"]
    download = f"{together.url}/finetune/download?ft_id={job_id}"

    pending = await client.post_training.get_training_job_status(job_uuid="life")
    assert pending.status == PostTrainingJobStatus.scheduled
    assert pending.scheduled_at.isoformat() == "2024-05-17T17:35:45+00:00"
    assert pending.started_at is None and pending.completed_at is None and pending.checkpoints == []
    assert pending.resources_allocated["vendor_job_id"] == job_id
    assert pending.resources_allocated["vendor_status"] == "pending"

    fine_tunes.advance(together, job_id)
    running = await client.post_training.get_training_job_status(job_uuid="life")
    assert running.status == PostTrainingJobStatus.running
    assert running.started_at.isoformat() == "2024-05-17T17:45:45+00:00"

    fine_tunes.advance(together, job_id)
    checkpointed = await client.post_training.get_training_job_status(job_uuid="life")
    assert [(c.iters, c.path) for c in checkpointed.checkpoints] == [(50, f"{download}&checkpoint_step=50")]
    assert checkpointed.resources_allocated["epochs_completed"] == 1

    fine_tunes.advance(together, job_id)
    done = await client.post_training.get_training_job_status(job_uuid="life")
    assert done.status == PostTrainingJobStatus.completed
    assert done.completed_at.isoformat() == "2024-05-17T18:05:45+00:00"
    assert [(c.iters, c.path) for c in done.checkpoints] == [(50, f"{download}&checkpoint_step=50"), (100, download)]
    assert done.resources_allocated["model_output_name"] == "fake-org/Meta-Llama-3.1-8B-Instruct-Reference-life"
    assert done.resources_allocated["total_price"] == 1500 and done.resources_allocated["token_count"] == 850000


async def test_a_failed_job_is_failed(client, together):
    await client.post_training.supervised_fine_tune(**sft("oom"))
    job_id = fine_tunes.job_by_suffix(together, "oom")["id"]
    fine_tunes.advance(together, job_id)
    fine_tunes.fail(together, job_id)
    status = await client.post_training.get_training_job_status(job_uuid="oom")
    assert status.status == PostTrainingJobStatus.failed and status.completed_at is not None
    logs = await client.post_training.get_training_job_logs(job_uuid="oom")
    assert logs.log_lines[-1] == "2024-05-17T17:55:45.000Z [error] job_error step=0/100: CUDA out of memory"


async def test_logs_are_the_events_one_line_each(client, together):
    await client.post_training.supervised_fine_tune(**sft("logged"))
    job_id = fine_tunes.job_by_suffix(together, "logged")["id"]
    fine_tunes.advance(together, job_id)
    fine_tunes.advance(together, job_id)

    logs = await client.post_training.get_training_job_logs(job_uuid="logged")

    assert logs.job_uuid == "logged"
    assert logs.log_lines == [
        "2024-05-17T17:35:45.000Z [info] job_pending step=0/100: Fine tune request created",
        "2024-05-17T17:45:45.000Z [info] job_start step=0/100: Job started",
        "2024-05-17T17:45:45.000Z [info] training_start step=0/100: Training started",
        "2024-05-17T17:55:45.000Z [info] checkpoint_save step=50/100: Checkpoint saved at step 50",
    ]


async def test_artifacts_are_download_urls_together_answers(client, together):
    await client.post_training.supervised_fine_tune(**sft("artifacts"))
    job_id = fine_tunes.job_by_suffix(together, "artifacts")["id"]
    for _ in range(3):
        fine_tunes.advance(together, job_id)

    artifacts = await client.post_training.get_training_job_artifacts(job_uuid="artifacts")

    assert [c.iters for c in artifacts.checkpoints] == [50, 100]
    for checkpoint in artifacts.checkpoints:
        assert checkpoint.path.startswith(f"{together.url}/finetune/download?")
        answer = httpx.get(checkpoint.path, headers={"Authorization": f"Bearer {API_KEY}"})
        assert answer.status_code == 200
        assert answer.json()["id"] == job_id and answer.json()["checkpoint_step"] == checkpoint.iters


async def test_checkpoints_come_from_the_events_when_together_lists_none(client, together):
    await client.post_training.supervised_fine_tune(**sft("from-events"))
    job_id = fine_tunes.job_by_suffix(together, "from-events")["id"]
    fine_tunes.advance(together, job_id)
    fine_tunes.advance(together, job_id)
    together.fail(
        "GET", "/fine-tunes/{id}/checkpoints", Fault("status", status=404, body=error_body(404, "no such route"))
    )

    artifacts = await client.post_training.get_training_job_artifacts(job_uuid="from-events")

    assert [(c.iters, c.path) for c in artifacts.checkpoints] == [
        (50, f"{together.url}/finetune/download?ft_id={job_id}&checkpoint_step=50")
    ]


async def test_cancel_asks_together_and_the_job_ends_failed(client, together):
    await client.post_training.supervised_fine_tune(**sft("cancelled"))
    job_id = fine_tunes.job_by_suffix(together, "cancelled")["id"]
    fine_tunes.advance(together, job_id)

    answer = await client.post_training.cancel_training_job(job_uuid="cancelled")

    assert [r.path for r in together.calls("POST", r"/v1/fine-tunes/.*/cancel")] == [f"/v1/fine-tunes/{job_id}/cancel"]
    assert answer.status == PostTrainingJobStatus.running  # cancel_requested: still stopping
    assert answer.resources_allocated["vendor_status"] == "cancel_requested"
    fine_tunes.advance(together, job_id)
    assert (
        await client.post_training.get_training_job_status(job_uuid="cancelled")
    ).status == PostTrainingJobStatus.failed
    with pytest.raises(BadRequestError, match="is cancelled and cannot be cancelled"):
        await client.post_training.cancel_training_job(job_uuid="cancelled")


async def test_list_shows_every_job_of_the_provider_with_its_status(client, together):
    assert await client.post_training.list_training_jobs() == []
    await client.post_training.supervised_fine_tune(**sft("listed-a"))
    await client.post_training.supervised_fine_tune(**sft("listed-b"))
    fine_tunes.advance(together, fine_tunes.job_by_suffix(together, "listed-b")["id"])

    jobs = await client.post_training.list_training_jobs()

    assert [(j.job_uuid, j.status) for j in jobs] == [
        ("listed-a", PostTrainingJobStatus.scheduled),
        ("listed-b", PostTrainingJobStatus.running),
    ]


async def test_unknown_jobs_are_404_naming_the_known_ones(client, together):
    with pytest.raises(NotFoundError, match="it has started no jobs yet"):
        await client.post_training.get_training_job_logs(job_uuid="nope")
    await client.post_training.supervised_fine_tune(**sft("known"))
    with pytest.raises(NotFoundError) as missing:
        await client.post_training.get_training_job_status(job_uuid="nope")
    assert "it knows 1 job(s): 'known'" in missing.value.message and missing.value.code == "job_not_found"


async def test_a_job_together_no_longer_knows_is_a_clear_404(client, together):
    await client.post_training.supervised_fine_tune(**sft("deleted-there"))
    job_id = fine_tunes.job_by_suffix(together, "deleted-there")["id"]
    together.fail(
        "GET", "/fine-tunes/{id}", Fault("status", status=404, body=error_body(404, "Fine-tune job not found"))
    )

    with pytest.raises(NotFoundError) as missing:
        await client.post_training.get_training_job_status(job_uuid="deleted-there")

    assert missing.value.code == "vendor_job_not_found"
    assert f"Together job {job_id}, which Together no longer knows (Fine-tune job not found)" in missing.value.message


async def test_jobs_survive_a_restart_on_the_same_storage(together, start_stack):
    first = await start_stack(post_training(together))
    await first.post_training.supervised_fine_tune(**sft("persistent"))
    await first.aclose()
    fine_tunes.advance(together, fine_tunes.job_by_suffix(together, "persistent")["id"])

    second = await start_stack(post_training(together))

    status = await second.post_training.get_training_job_status(job_uuid="persistent")
    assert status.status == PostTrainingJobStatus.running
    assert [j.job_uuid for j in await second.post_training.list_training_jobs()] == ["persistent"]
    with pytest.raises(ConflictError):
        await second.post_training.supervised_fine_tune(**sft("persistent"))


# ---------------------------------------------------------------------------------------- real server
@pytest.mark.slow
async def test_fine_tuning_through_a_server_process_and_after_its_restart(together, tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_bytes(jsonl(TRAIN_ROWS))
    path = write_distribution(tmp_path, post_training(together, datasets={"file_roots": [str(data_dir)]}))
    file_dataset = {"columns": {"messages": "dialog"}, "content_url": (data_dir / "train.jsonl").as_uri()}

    with serving(path, health_timeout=60) as served:
        url = served.url
        async with LlamaStackClient.http(url) as client:
            await client.post_training.supervised_fine_tune(
                **sft("served", dataset=file_dataset, validation_dataset=file_dataset)
            )
            with pytest.raises(NotSupportedError):
                await client.post_training.supervised_fine_tune(**sft("served-qlora", algorithm="qlora"))
    assert fine_tunes.file_content(together, created(together)[0]["training_file"]) == jsonl(TRAIN_ROWS)
    job_id = fine_tunes.job_by_suffix(together, "served")["id"]
    fine_tunes.advance(together, job_id)
    fine_tunes.advance(together, job_id)

    with serving(path, health_timeout=60) as served:
        url = served.url
        async with LlamaStackClient.http(url) as client:
            status = await client.post_training.get_training_job_status(job_uuid="served")
            logs = await client.post_training.get_training_job_logs(job_uuid="served")
            with pytest.raises(NotFoundError):
                await client.post_training.get_training_job_artifacts(job_uuid="never-started")
    assert status.status == PostTrainingJobStatus.running
    assert [c.iters for c in status.checkpoints] == [50]
    assert logs.log_lines[-1].endswith("checkpoint_save step=50/100: Checkpoint saved at step 50")


# ------------------------------------------------------------------------------------- dataset reading
def reader(handler: Any = None, **config: Any) -> DatasetReader:
    transport = httpx.MockTransport(handler) if handler else None
    # http(s):// is off by default and a host the resolver does not know refused: the mock's host is allowed.
    config = {"allow_http": True, "allowed_hosts": ["data.example"], **config}
    return DatasetReader(DatasetSourceConfig(**config), provider="together-ft", transport=transport)


async def test_http_datasets_are_fetched_following_redirects():
    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(302, headers={"location": "https://data.example/train.jsonl"})
        return httpx.Response(200, content=jsonl(TRAIN_ROWS))

    assert await reader(serve).read("https://data.example/old", "dataset.content_url") == jsonl(TRAIN_ROWS)


async def test_http_datasets_over_the_limit_or_failing_are_400():
    big = reader(lambda request: httpx.Response(200, content=b"x" * 2048), max_bytes=1024)
    with pytest.raises(
        BadRequestError, match=r"dataset.content_url: the dataset \(2048 bytes\) is larger than the 1024 bytes"
    ):
        await big.read("https://data.example/big.jsonl", "dataset.content_url")
    gone = reader(lambda request: httpx.Response(404))
    with pytest.raises(BadRequestError, match=r"fetching https://data\.example/gone failed"):
        await gone.read("https://data.example/gone", "dataset.content_url")
    with pytest.raises(BadRequestError, match=r"disabled on this server.*datasets\.allow_http"):
        await reader(allow_http=False).read("https://data.example/x", "dataset.content_url")


async def test_file_datasets_must_stay_inside_the_allowed_roots(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "train.jsonl").write_bytes(b"{}\n")
    (tmp_path / "secret.txt").write_text("not for upload")
    files = reader(file_roots=[allowed])
    assert await files.read((allowed / "train.jsonl").as_uri(), "dataset.content_url") == b"{}\n"
    escape = f"file://{allowed}/../secret.txt"
    with pytest.raises(BadRequestError, match="is outside the folders datasets may come from"):
        await files.read(escape, "dataset.content_url")
    with pytest.raises(BadRequestError, match="does not exist"):
        await files.read((allowed / "missing.jsonl").as_uri(), "dataset.content_url")
