"""remote::emissary post-training against the fake Emissary API: projects, dataset uploads (5 MB cap), SFT,
GRPO with testing functions, refusals, a job's life (status, synthesized logs, artifacts, cancel, list),
restarts, and one run through a real server.

The fake's jobs move only when a test calls ``emissary_training.advance``, so every status is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import emissary_training as training
from fakes.emissary import API_KEY
from fakes.vendor_server import Fault
from remote.conftest import write_distribution
from remote.training_support import TrainingProvider, inline_dataset, jsonl, training_config, training_request
from support import serving

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, NotSupportedError, ProviderError
from llama_stack.apis.post_training import PostTrainingJobStatus
from llama_stack.client import LlamaStackClient

BASE = "Llama-3.2-1B-Instruct"
TRAIN_ROWS = [
    {"prompt": "What is 1 + 1?", "completion": "2"},
    {"prompt": "Capital of France?", "completion": "Paris"},
]
TEST_ROWS = [{"prompt": "2 + 2?", "completion": "4"}]
MAX_BYTES = 5 * 1024 * 1024


def dataset(content: bytes) -> dict[str, Any]:
    return inline_dataset(content, {"prompt": "text", "completion": "text"})


TRAINING_CONFIG = training_config(batch_size=2)
OPTIMIZER_CONFIG = {"optimizer_type": "adamw", "lr": 2e-4, "lr_min": 0.0, "weight_decay": 0.0}
LORA = {
    "lora_attn_modules": ["q_proj", "v_proj"],
    "apply_lora_to_mlp": False,
    "apply_lora_to_output": False,
    "rank": 8,
    "alpha": 16,
}


def data_and_configs() -> dict[str, Any]:
    return {
        "dataset": dataset(jsonl(TRAIN_ROWS)),
        "validation_dataset": dataset(jsonl(TEST_ROWS)),
        "optimizer_config": OPTIMIZER_CONFIG,
        "training_config": TRAINING_CONFIG,
    }


def sft(job_uuid: str, **overrides: Any) -> dict[str, Any]:
    fields = {"model": BASE, "algorithm": "lora", "algorithm_config": LORA, **data_and_configs()}
    return training_request(job_uuid, fields, overrides)


def grpo(
    job_uuid: str, finetuned_model: str, rewards: dict[str, float] | None = None, **overrides: Any
) -> dict[str, Any]:
    grpo_config = {"reward_functions": rewards or {"similarity_score_shared": 1.0}, "num_generations": 6}
    fields = {
        "finetuned_model": finetuned_model,
        "algorithm": "grpo",
        "algorithm_config": grpo_config,
        **data_and_configs(),
    }
    return training_request(job_uuid, fields, overrides)


EMISSARY = TrainingProvider("emissary", "remote::emissary", "emissary-ft", API_KEY, training.reset)
post_training = EMISSARY.providers
fresh, client = EMISSARY.fixtures()


def created(emissary: Any, route: str = "training-jobs") -> list[dict[str, Any]]:
    return [r.json for r in emissary.calls("POST", rf"/v1/projects/[^/]+/{route}")]


def uploads(emissary: Any) -> list[Any]:
    return emissary.calls("POST", r"/v1/projects/[^/]+/datasets")


def only_project(emissary: Any) -> str:
    (project_id,) = training.state(emissary).projects
    return project_id


# ---------------------------------------------------------------------------------------------- SFT
async def test_sft_creates_the_project_once_uploads_the_datasets_and_maps_the_hyperparameters(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("sft-1"))
    await client.post_training.supervised_fine_tune(**sft("sft-2"))

    project_id = only_project(emissary)
    assert training.state(emissary).projects[project_id]["name"] == "llama-stack"
    assert [r.json for r in emissary.calls("POST", "/v1/projects")] == [{"name": "llama-stack"}]
    assert len(emissary.calls("GET", "/v1/projects")) == 1  # remembered after the first job
    train, test = uploads(emissary)[:2]
    assert train.path == f"/v1/projects/{project_id}/datasets"
    assert train.form == {"file": ("sft-1-train.jsonl", jsonl(TRAIN_ROWS)), "name": "sft-1-train"}
    assert test.form == {"file": ("sft-1-validation.jsonl", jsonl(TEST_ROWS)), "name": "sft-1-validation"}
    train_id, test_id = list(training.state(emissary).datasets)[:2]
    assert created(emissary)[0] == {
        "base_model_option": "pre-trained",
        "base_model": BASE,
        "train_dataset_id": train_id,
        "test_dataset_id": test_id,
        "name": "sft-1",
        "description": "llama-stack SFT sft-1",
        "task_type": "text-generation",
        "parameters": {
            "learning_rate": 2e-4,
            "num_train_epochs": 3,
            "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 2,
        },
    }
    assert training.dataset(emissary, train_id)["content"] == jsonl(TRAIN_ROWS)


async def test_a_configured_project_is_used_as_is(emissary, start_stack):
    project_id = training.add_project(emissary, "mine")
    client = await start_stack(post_training(emissary, project_id=project_id))
    await client.post_training.supervised_fine_tune(**sft("in-mine", algorithm="full"))
    assert emissary.calls("GET", "/v1/projects") == [] and emissary.calls("POST", "/v1/projects") == []
    assert created(emissary)[0]["train_dataset_id"] in training.state(emissary).datasets
    assert training.job_by_name(emissary, "in-mine")["project_id"] == project_id


async def test_an_existing_project_of_that_name_is_found_not_created(emissary, start_stack):
    project_id = training.add_project(emissary, "team-project")
    client = await start_stack(post_training(emissary, project_name="team-project"))
    await client.post_training.supervised_fine_tune(**sft("found"))
    assert emissary.calls("POST", "/v1/projects") == []
    assert training.job_by_name(emissary, "found")["project_id"] == project_id


async def test_the_same_dataset_for_validation_is_uploaded_once(client, emissary):
    same = dataset(jsonl(TRAIN_ROWS))
    await client.post_training.supervised_fine_tune(**sft("same-data", dataset=same, validation_dataset=same))
    assert len(uploads(emissary)) == 1
    body = created(emissary)[0]
    assert body["test_dataset_id"] == body["train_dataset_id"]


async def test_a_dataset_over_5_mb_is_refused_before_any_upload(client, emissary):
    big = dataset(b'{"prompt": "x", "completion": "y"}\n' * (MAX_BYTES // 34 + 10))
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.supervised_fine_tune(**sft("too-big", validation_dataset=big))
    assert refused.value.status == 400
    assert "validation_dataset.content_url" in refused.value.message
    assert "5 MiB (5242880 bytes) Emissary accepts per dataset file" in refused.value.message
    assert uploads(emissary) == [] and created(emissary) == []


async def test_a_dataset_just_under_5_mb_is_uploaded(client, emissary):
    row = b'{"prompt": "x", "completion": "y"}\n'
    content = row * (MAX_BYTES // len(row))
    await client.post_training.supervised_fine_tune(**sft("just-fits", dataset=dataset(content)))
    assert uploads(emissary)[0].form["file"] == ("just-fits-train.jsonl", content)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"algorithm": "qlora"}, NotSupportedError, "Emissary has no QLORA fine-tuning"),
        ({"algorithm": "dora"}, NotSupportedError, "Emissary has no DORA fine-tuning"),
        ({"logger_config": {"project": "x"}}, BadRequestError, "no experiment-tracker integration"),
        ({"optimizer_config": {**OPTIMIZER_CONFIG, "optimizer_type": "sgd"}}, BadRequestError, "AdamW only"),
        ({"hyperparam_search_config": {"lr": [1e-4]}}, BadRequestError, "no hyperparameter search"),
    ],
)
async def test_what_emissary_cannot_do_is_refused_before_calling_it(client, emissary, overrides, error, message):
    with pytest.raises(error, match=message):
        await client.post_training.supervised_fine_tune(**sft("refused", **overrides))
    assert emissary.requests == []


async def test_a_base_model_emissary_does_not_train_is_refused_naming_the_ones_it_does(client, emissary):
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.supervised_fine_tune(**sft("unknown-model", model="llama3_8b"))
    assert "has no base model 'llama3_8b'" in refused.value.message and BASE in refused.value.message
    assert uploads(emissary) == [] and created(emissary) == []


async def test_a_model_id_is_mapped_by_base_models(emissary, start_stack):
    client = await start_stack(post_training(emissary, base_models={"llama-1b": BASE}))
    await client.post_training.supervised_fine_tune(**sft("mapped", model="llama-1b"))
    assert created(emissary)[0]["base_model"] == BASE


async def test_dpo_is_not_supported_by_emissary(client, emissary):
    request = grpo(
        "dpo-1",
        "https://huggingface.co/acme/m",
        algorithm="dpo",
        algorithm_config={"reward_scale": 1.0, "reward_clip": 5.0, "epsilon": 0.1, "gamma": 0.99},
    )
    with pytest.raises(NotSupportedError, match=r"no DPO training: use algorithm 'grpo' .* remote::together"):
        await client.post_training.preference_optimize(**request)
    assert emissary.requests == []


async def test_a_job_uuid_is_used_once_and_creating_is_not_retried(client, emissary):
    emissary.fail("POST", "/v1/projects/{project_id}/training-jobs", Fault("drop"))
    with pytest.raises(ProviderError, match="dropped the connection"):
        await client.post_training.supervised_fine_tune(**sft("once"))
    assert len(created(emissary)) == 1
    await client.post_training.supervised_fine_tune(**sft("once"))
    with pytest.raises(ConflictError):
        await client.post_training.supervised_fine_tune(**sft("once"))
    assert len(created(emissary)) == 2


def test_the_fake_refuses_training_requests_outside_the_spec(emissary):
    headers = {"X-API-Key": API_KEY}
    project_id = training.add_project(emissary, "strict")
    no_file = httpx.post(
        f"{emissary.url}/v1/projects/{project_id}/datasets", files={"name": (None, b"n")}, headers=headers
    )
    misplaced = httpx.post(
        f"{emissary.url}/v1/projects/{project_id}/training-jobs",
        json={"base_model": BASE, "train_dataset_id": "ds-1", "learning_rate": 2e-4},
        headers=headers,
    )
    assert [no_file.status_code, misplaced.status_code] == [400, 400]
    assert "'file' is a required property" in emissary.violations[0]
    assert "learning_rate: not a field the spec declares" in emissary.violations[1]
    emissary.violations.clear()


# --------------------------------------------------------------------------------------------- GRPO
async def test_grpo_rewards_with_the_testing_functions(emissary, start_stack):
    client = await start_stack(post_training(emissary, preference_model=BASE))
    rewards = {"similarity_score_shared": 0.7, "exact_match_shared": 0.3}

    await client.post_training.preference_optimize(
        **grpo("grpo-1", "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct", rewards)
    )

    assert len(emissary.calls("GET", "/v1/testing-functions")) == 1
    (body,) = created(emissary, "training-jobs/grpo")
    train_id, test_id = list(training.state(emissary).datasets)
    assert body == {
        "base_model_option": "pre-trained",
        "base_model": BASE,
        "hf_model_link": "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct",
        "train_dataset_id": train_id,
        "test_dataset_id": test_id,
        "test_functions": ["similarity_score_shared", "exact_match_shared"],
        "reward": rewards,
        "name": "grpo-1",
        "description": "llama-stack GRPO grpo-1",
        "task_type": "text-generation",
        "parameters": {
            "learning_rate": 2e-4,
            "num_train_epochs": 3,
            "num_generations": 6,
            "per_device_train_batch_size": 2,
        },
    }
    assert training.job_by_name(emissary, "grpo-1")["training_technique"] == "GRPO"


async def test_grpo_with_an_unknown_reward_function_is_refused_naming_the_available_ones(emissary, start_stack):
    client = await start_stack(post_training(emissary, preference_model=BASE))
    with pytest.raises(BadRequestError) as refused:
        await client.post_training.preference_optimize(**grpo("grpo-bad", "https://example.com/m", {"bleu": 1.0}))
    assert "no testing function 'bleu'" in refused.value.message
    assert "similarity_score_shared, exact_match_shared" in refused.value.message
    assert uploads(emissary) == [] and created(emissary, "training-jobs/grpo") == []


async def test_grpo_without_a_model_to_start_from_is_refused(client, emissary):
    with pytest.raises(
        BadRequestError, match=r"is not an Emissary training job of this provider .* no preference_model"
    ):
        await client.post_training.preference_optimize(**grpo("grpo-nowhere", "https://example.com/m"))
    assert uploads(emissary) == []


async def test_grpo_continues_from_a_checkpoint_of_an_earlier_sft_job(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("sft-base"))
    base = training.job_by_name(emissary, "sft-base")
    for _ in range(3):
        training.advance(emissary, base["id"])
    first = (await client.post_training.get_training_job_artifacts(job_uuid="sft-base")).checkpoints[0]

    await client.post_training.preference_optimize(**grpo("grpo-continued", first.path))

    body = created(emissary, "training-jobs/grpo")[0]
    assert (body["base_model_option"], body["base_model"], body["checkpoint"]) == ("fine-tuned", base["id"], 1)
    job = training.job_by_name(emissary, "grpo-continued")
    assert (job["base_fine_tuned_model"], job["base_fine_tuned_model_checkpoint"]) == (base["id"], 1)


# ------------------------------------------------------------------------------------ job lifecycle
async def test_status_follows_the_job_with_timestamps_and_checkpoints(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("life"))
    job = training.job_by_name(emissary, "life")
    project_id = only_project(emissary)
    s3_checkpoint = f"{emissary.url}/v1/projects/{project_id}/training-jobs/{job['id']}/checkpoints#checkpoint=1"
    https_checkpoint = f"https://models.withemissary.com/{job['id']}/checkpoint-2.tar.gz"

    pending = await client.post_training.get_training_job_status(job_uuid="life")
    assert pending.status == PostTrainingJobStatus.scheduled
    assert pending.scheduled_at.isoformat() == "2021-09-30T21:20:00+00:00"
    assert pending.started_at is None and pending.completed_at is None and pending.checkpoints == []
    assert pending.resources_allocated == {
        "vendor_job_id": job["id"],
        "vendor_status": "Pending",
        "project_id": project_id,
        "progress": 0,
        "training_technique": "SFT",
        "base_model": BASE,
    }

    training.advance(emissary, job["id"])
    running = await client.post_training.get_training_job_status(job_uuid="life")
    assert running.status == PostTrainingJobStatus.running
    assert running.resources_allocated["progress"] == 50 and running.resources_allocated["training_loss"] == 1.875
    # Emissary's s3:// path is no URL a client can use: the checkpoint is named on Emissary's API.
    assert [(c.iters, c.path) for c in running.checkpoints] == [(1, s3_checkpoint)]

    training.advance(emissary, job["id"])
    testing = await client.post_training.get_training_job_status(job_uuid="life")
    assert testing.status == PostTrainingJobStatus.running  # Emissary is testing the checkpoints
    assert [(c.iters, c.path) for c in testing.checkpoints] == [(1, s3_checkpoint), (2, https_checkpoint)]

    training.advance(emissary, job["id"])
    done = await client.post_training.get_training_job_status(job_uuid="life")
    assert done.status == PostTrainingJobStatus.completed
    assert done.completed_at.isoformat() == "2021-09-30T21:25:00+00:00"


@pytest.mark.parametrize("vendor_status", ["Failed", "TimedOut"])
async def test_failed_and_timed_out_jobs_are_failed(client, emissary, vendor_status):
    await client.post_training.supervised_fine_tune(**sft(f"ended-{vendor_status}"))
    job = training.job_by_name(emissary, f"ended-{vendor_status}")
    training.fail(emissary, job["id"], vendor_status)
    status = await client.post_training.get_training_job_status(job_uuid=f"ended-{vendor_status}")
    assert status.status == PostTrainingJobStatus.failed
    assert status.completed_at.isoformat() == "2021-09-30T21:21:40+00:00"
    logs = await client.post_training.get_training_job_logs(job_uuid=f"ended-{vendor_status}")
    assert logs.log_lines[-1] == f"2021-09-30T21:21:40Z [error] status: {vendor_status}, progress 0%"


@pytest.mark.parametrize("odd_status", [None, ["Running"], {"phase": "Running"}], ids=["null", "list", "object"])
async def test_a_job_status_that_is_not_a_name_is_a_502_and_the_logs_still_answer(client, emissary, odd_status):
    await client.post_training.supervised_fine_tune(**sft("odd"))
    job = training.job_by_name(emissary, "odd")
    # Off Emissary's spec on purpose (its fake would not answer so): a scripted answer for the status and logs reads.
    odd_job = {**job, "status": odd_status, "training_loss": 0.42}  # a bare number where loss points belong
    emissary.fail(
        "GET", "/v1/projects/{project_id}/training-jobs/{training_job_id}", Fault("status", 200, odd_job), times=2
    )

    with pytest.raises(ProviderError) as refused:
        await client.post_training.get_training_job_status(job_uuid="odd")

    assert refused.value.status == 502
    assert f"reported status {odd_status!r}" in refused.value.message and "does not know" in refused.value.message
    logs = await client.post_training.get_training_job_logs(job_uuid="odd")
    assert logs.log_lines[-1].endswith(f"[info] status: {odd_status}, progress 0%")


async def test_logs_are_made_from_status_progress_and_training_loss(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("logged"))
    job = training.job_by_name(emissary, "logged")
    training.advance(emissary, job["id"])
    training.advance(emissary, job["id"])

    logs = await client.post_training.get_training_job_logs(job_uuid="logged")

    assert logs.log_lines == [
        f"2021-09-30T21:20:00Z [info] job_created: SFT job {job['id']} (logged) on {BASE}",
        "2021-09-30T21:21:40Z [info] training_loss point=1/2: loss=1.875",
        "2021-09-30T21:23:20Z [info] training_loss point=2/2: loss=0.625",
        "2021-09-30T21:23:20Z [info] status: Testing, progress 100%",
    ]


async def test_artifacts_have_urls_llama_stack_accepts(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("artifacts"))
    job = training.job_by_name(emissary, "artifacts")
    for _ in range(3):
        training.advance(emissary, job["id"])

    artifacts = await client.post_training.get_training_job_artifacts(job_uuid="artifacts")

    assert [c.iters for c in artifacts.checkpoints] == [1, 2]
    assert all(c.path.startswith(("https://", "http://")) for c in artifacts.checkpoints)
    # The API-named checkpoint is a real route of Emissary's that lists it.
    listing = httpx.get(artifacts.checkpoints[0].path.split("#")[0], headers={"X-API-Key": API_KEY})
    assert listing.status_code == 200 and [c["checkpoint"] for c in listing.json()] == [1, 2]


async def test_cancel_stops_the_job_and_answers_its_status(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("cancelled"))
    job = training.job_by_name(emissary, "cancelled")
    training.advance(emissary, job["id"])

    answer = await client.post_training.cancel_training_job(job_uuid="cancelled")

    assert [r.path for r in emissary.calls("POST", r"/v1/projects/.*/cancel")] == [
        f"/v1/projects/{only_project(emissary)}/training-jobs/{job['id']}/cancel"
    ]
    assert answer.status == PostTrainingJobStatus.failed
    assert answer.resources_allocated["vendor_status"] == "Cancelled"
    assert [c.iters for c in answer.checkpoints] == [1]  # what it saved stays available
    logs = await client.post_training.get_training_job_logs(job_uuid="cancelled")
    assert logs.log_lines[-1].endswith("[warning] status: Cancelled, progress 50%")


async def test_list_shows_every_job_of_the_provider_with_its_status(client, emissary):
    assert await client.post_training.list_training_jobs() == []
    await client.post_training.supervised_fine_tune(**sft("listed-a"))
    await client.post_training.supervised_fine_tune(**sft("listed-b"))
    training.advance(emissary, training.job_by_name(emissary, "listed-a")["id"])

    jobs = await client.post_training.list_training_jobs()

    assert [(j.job_uuid, j.status) for j in jobs] == [
        ("listed-a", PostTrainingJobStatus.running),
        ("listed-b", PostTrainingJobStatus.scheduled),
    ]
    assert len(emissary.calls("GET", r"/v1/projects/[^/]+/training-jobs")) == 1


async def test_a_job_deleted_on_emissary_is_a_clear_404(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("deleted-there"))
    job = training.job_by_name(emissary, "deleted-there")
    project_id = only_project(emissary)
    deleted = httpx.delete(
        f"{emissary.url}/v1/projects/{project_id}/training-jobs/{job['id']}", headers={"X-API-Key": API_KEY}
    )
    assert deleted.status_code == 204

    with pytest.raises(NotFoundError) as missing:
        await client.post_training.get_training_job_status(job_uuid="deleted-there")

    assert missing.value.code == "vendor_job_not_found"
    assert f"Emissary job {job['id']} in project {project_id}, which Emissary no longer knows" in missing.value.message
    assert await client.post_training.list_training_jobs() == []


async def test_unknown_jobs_are_404_naming_the_known_ones(client, emissary):
    await client.post_training.supervised_fine_tune(**sft("known"))
    with pytest.raises(NotFoundError, match="it knows 1 job\\(s\\): 'known'"):
        await client.post_training.cancel_training_job(job_uuid="nope")


async def test_jobs_survive_a_restart_on_the_same_storage(emissary, start_stack):
    first = await start_stack(post_training(emissary))
    await first.post_training.supervised_fine_tune(**sft("persistent"))
    await first.aclose()
    training.advance(emissary, training.job_by_name(emissary, "persistent")["id"])

    second = await start_stack(post_training(emissary, project_name="another-name"))

    status = await second.post_training.get_training_job_status(job_uuid="persistent")
    assert status.status == PostTrainingJobStatus.running
    # The job's project was stored with it: a changed project_name does not lose it.
    assert status.resources_allocated["project_id"] == only_project(emissary)
    with pytest.raises(ConflictError):
        await second.post_training.supervised_fine_tune(**sft("persistent"))


# ---------------------------------------------------------------------------------------- real server
@pytest.mark.slow
async def test_grpo_through_a_server_process(emissary, tmp_path: Path):
    path = write_distribution(tmp_path, post_training(emissary, preference_model=BASE))
    with serving(path, health_timeout=60) as served:
        url = served.url
        async with LlamaStackClient.http(url) as client:
            job = await client.post_training.preference_optimize(**grpo("served-grpo", "https://example.com/base"))
            training.advance(emissary, training.job_by_name(emissary, "served-grpo")["id"])
            status = await client.post_training.get_training_job_status(job_uuid="served-grpo")
            with pytest.raises(BadRequestError, match="5 MiB"):
                big = dataset(b"x" * (MAX_BYTES + 1))
                await client.post_training.supervised_fine_tune(**sft("served-big", dataset=big))
    assert job.job_uuid == "served-grpo"
    assert status.status == PostTrainingJobStatus.running and [c.iters for c in status.checkpoints] == [1]
    assert created(emissary, "training-jobs/grpo")[0]["reward"] == {"similarity_score_shared": 1.0}
