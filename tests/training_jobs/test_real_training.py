"""inline::torch post-training with the real training process on a tiny random Llama (SmolLM2's tokenizer):
a LoRA job from request to checkpoints, continued by a second job and by DPO; a cancel stopping a job that
trains; a job of two processes under torchrun (gloo)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from training.conftest import smollm2_tokenizer, tiny_model  # noqa: F401 (fixtures)
from training_jobs.jobs_support import (
    build_provider,
    dpo,
    inference_router,
    job_folder,
    pid_alive,
    sft,
    status_becomes,
    until,
)

from llama_stack.apis.inspect import Model
from llama_stack.apis.post_training import CancelTrainingJobRequest, PostTrainingJobStatus
from llama_stack.providers.inline.torch.jobs.config import TRAINING_MODULE
from llama_stack.providers.inline.torch.training.spec import job_is_running

pytestmark = pytest.mark.slow

# A few steps: 6 rows, batches of 2, one epoch.
FEW_STEPS = {"n_epochs": 1, "batch_size": 2, "n_iters": 0}
JOB_TIMEOUT = 240.0


@pytest.fixture
async def provider(tmp_path, tiny_model):  # noqa: F811
    router = inference_router([Model(model_id="tiny", provider_id="torch", provider_model_id=str(tiny_model))])
    built = await build_provider(
        tmp_path / "state", inference=router, training_module=TRAINING_MODULE, torch_threads=1, max_seq_len=64
    )
    try:
        yield built
    finally:
        await built.shutdown()


def step_losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [line["loss"] for line in lines if "loss" in line]


async def test_a_lora_job_then_its_continuation_and_dpo(provider):
    await provider.supervised_fine_tune(sft("lora", training_config=FEW_STEPS, optimizer_config={"lr": 1e-2}))
    done = await status_becomes(provider, "lora", PostTrainingJobStatus.completed, JOB_TIMEOUT)
    assert done.progress is not None and done.progress.step == done.progress.total_steps == 3
    assert done.started_at is not None and done.completed_at is not None and done.error is None
    assert (done.resources_allocated or {})["processes"] == 1
    last = done.checkpoints[-1]
    assert last.iters == 3 and last.path.startswith("file://")
    adapter = Path(last.path.removeprefix("file://"))
    assert (adapter / "adapter_config.json").is_file() and (adapter / "checkpoint.json").is_file()
    assert len(step_losses(job_folder(provider, "lora"))) == 3

    artifacts = await provider.get_training_job_artifacts("lora")
    assert artifacts.loss_curve is not None
    assert base64.b64decode(artifacts.loss_curve.split(",", 1)[1]).startswith(b"\x89PNG")
    logs = (await provider.get_training_job_logs("lora")).log_lines
    assert any("step 3/3" in line for line in logs), logs

    # The checkpoint, named as the artifacts name it, continues the adapter...
    await provider.supervised_fine_tune(sft("more", model=last.path, training_config=FEW_STEPS))
    more = await status_becomes(provider, "more", PostTrainingJobStatus.completed, JOB_TIMEOUT)
    assert (more.resources_allocated or {})["base_adapter"] == str(adapter)
    # ... and so does a DPO job starting from it.
    await provider.preference_optimize(dpo("dpo", last.path, training_config=FEW_STEPS))
    aligned = await status_becomes(provider, "dpo", PostTrainingJobStatus.completed, JOB_TIMEOUT)
    assert aligned.checkpoints and aligned.error is None


async def test_cancel_stops_a_training_job(provider):
    await provider.supervised_fine_tune(sft("long", training_config={"n_epochs": 1000, "batch_size": 2, "n_iters": 0}))
    status = await status_becomes(provider, "long", PostTrainingJobStatus.running, JOB_TIMEOUT)
    pid = status.resources_allocated["pid"]  # type: ignore[index]
    cancelled = await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="long"))
    assert cancelled.status == PostTrainingJobStatus.failed
    assert cancelled.error is not None and cancelled.error.startswith("cancelled at ")
    assert not job_is_running(job_folder(provider, "long"))

    async def gone() -> bool:
        return not pid_alive(pid)

    await until(gone, 10, "the job's processes to be gone")


async def test_two_processes_under_torchrun(tmp_path, tiny_model):  # noqa: F811
    router = inference_router([Model(model_id="tiny", provider_id="torch", provider_model_id=str(tiny_model))])
    provider = await build_provider(
        tmp_path / "state",
        inference=router,
        training_module=TRAINING_MODULE,
        nproc_per_node=2,
        backend="gloo",
        max_seq_len=64,
    )
    try:
        await provider.supervised_fine_tune(sft("ddp", training_config=FEW_STEPS))
        done = await status_becomes(provider, "ddp", PostTrainingJobStatus.completed, JOB_TIMEOUT)
        assert (done.resources_allocated or {})["processes"] == 2
        assert done.checkpoints and done.checkpoints[-1].iters == 3
        log = (job_folder(provider, "ddp") / "output.log").read_text()
        assert "torch.distributed.run --nproc_per_node 2 --standalone" in log
    finally:
        await provider.shutdown()
