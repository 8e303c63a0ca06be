"""inline::torch post-training over HTTP, through `llama-stack run` (the fake trainer trains): the seed's
routes and shapes, a dataset named by uuid, refusals as error bodies, and a server restart while a job runs."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import replay_plugin_env, serving
from training_jobs.jobs_support import DIALOG_DATASET, HERE, sft_fields, weights_folder

pytestmark = pytest.mark.slow

YAML = """
name: training-over-http
apis: [inference, datasets, post_training]
providers:
  inference:
    - provider_id: replay
      provider_type: inline::replay
      config: {{}}
  datasets:
    - provider_id: datasets
      provider_type: inline::datasets
      config: {{}}
  post_training:
    - provider_id: torch-training
      provider_type: inline::torch
      config:
        training_module: fake_trainer
        poll_interval_s: 0.1
        device: cpu
models:
  - {{model_id: tiny, provider_id: replay, provider_model_id: "{weights}"}}
storage:
  dir: {storage}
"""


@pytest.fixture
def distribution(tmp_path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "training.yaml"
    path.write_text(YAML.format(weights=weights_folder(tmp_path / "models"), storage=tmp_path / "state"))
    env = replay_plugin_env(tmp_path / "plugins")
    env["PYTHONPATH"] = f"{HERE}:{env['PYTHONPATH']}"
    return path, env


def status_of(url: str, job_uuid: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/post_training/job/status", params={"job_uuid": job_uuid}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_status(url: str, job_uuid: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = status_of(url, job_uuid)
        if seen["status"] == status and (status != "running" or seen["checkpoints"]):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_uuid} not {status} within {timeout}s: {seen}")
        time.sleep(0.05)  # polling a condition with a deadline


def test_jobs_over_http_survive_a_server_restart(distribution):
    path, env = distribution
    request = sft_fields("http-1", dataset="dialogs", validation_dataset="dialogs")
    with serving(path, env=env) as server:
        created = httpx.post(
            f"{server.url}/datasets/create", json={"uuid": "dialogs", "dataset": DIALOG_DATASET}, timeout=30
        )
        assert created.status_code == 200, created.text
        answer = httpx.post(f"{server.url}/post_training/supervised_fine_tune/", json=request, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"job_uuid": "http-1"}
        running = wait_status(server.url, "http-1", "running")
        assert [c["iters"] for c in running["checkpoints"]] == [1]
        assert running["progress"] == {"epoch": 0, "step": 1, "total_steps": 2}
        listed = httpx.get(f"{server.url}/post_training/jobs", timeout=30).json()
        assert {"job_uuid": "http-1", "status": "running"} in listed
        logs = httpx.get(f"{server.url}/post_training/job/logs", params={"job_uuid": "http-1"}, timeout=30).json()
        assert logs["job_uuid"] == "http-1" and "fake trainer: step 1/2 loss 2.5" in logs["log_lines"]
        folder = Path(running["resources_allocated"]["job_folder"])

    # The server is gone; the job is not.
    with serving(path, env=env) as server:
        assert status_of(server.url, "http-1")["status"] == "running"
        (folder / "release").touch()
        done = wait_status(server.url, "http-1", "completed")
        assert done["completed_at"] is not None and [c["iters"] for c in done["checkpoints"]] == [1, 2]
        artifacts = httpx.get(
            f"{server.url}/post_training/job/artifacts", params={"job_uuid": "http-1"}, timeout=30
        ).json()
        assert base64.b64decode(artifacts["loss_curve"].removeprefix("data:image/png;base64,")).startswith(b"\x89PNG")


def test_refusals_and_cancel_over_http(distribution):
    path, env = distribution
    with serving(path, env=env) as server:
        qlora = httpx.post(
            f"{server.url}/post_training/supervised_fine_tune/", json=sft_fields("q", algorithm="qlora"), timeout=30
        )
        assert qlora.status_code == 400
        error = qlora.json()["error"]
        assert error["param"] == "algorithm" and "QLoRA needs a CUDA GPU" in error["message"]

        unknown_dataset = httpx.post(
            f"{server.url}/post_training/supervised_fine_tune/",
            json=sft_fields("u", dataset="nope", validation_dataset="nope"),
            timeout=30,
        )
        assert unknown_dataset.status_code == 404 and unknown_dataset.json()["error"]["param"] == "dataset"

        unknown_job = httpx.get(f"{server.url}/post_training/job/status", params={"job_uuid": "nope"}, timeout=30)
        assert unknown_job.status_code == 404

        answer = httpx.post(f"{server.url}/post_training/supervised_fine_tune/", json=sft_fields("c"), timeout=30)
        assert answer.status_code == 200, answer.text
        wait_status(server.url, "c", "running")
        cancelled = httpx.post(f"{server.url}/post_training/job/cancel", json={"job_uuid": "c"}, timeout=60)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "failed" and cancelled.json()["error"].startswith("cancelled at ")
        assert httpx.get(f"{server.url}/post_training/jobs", timeout=30).json() == [
            {"job_uuid": "c", "status": "failed"}
        ]
