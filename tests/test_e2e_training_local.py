"""End to end on `llama-stack run local`: a dataset, a LoRA fine-tune of the real SmolLM2 on the CPU as a job
outside the server, its adapter registered as a model answering a chat, and jobs across a server restart."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Served, serving

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
TRAINER = "torch-training"
# The same few dialogs every step: a few steps of a LoRA at a high learning rate must lower their loss.
DIALOGS = [
    {
        "dialog": [
            {"role": "user", "content": f"What is the code word for {thing}?"},
            {"role": "assistant", "content": f"The code word for {thing} is Quillacollo."},
        ]
    }
    for thing in ("the river", "the mountain", "the city", "the lake")
]


def data_url(rows: list[dict[str, Any]]) -> str:
    text = "\n".join(json.dumps(row) for row in rows)
    return "data:application/jsonl;base64," + base64.b64encode(text.encode()).decode()


def sft_request(job_uuid: str, dataset: Any, *, algorithm: str = "lora", epochs: int = 1, iters: int = 4) -> dict:
    lora = {
        "lora_attn_modules": ["q_proj", "v_proj"],
        "apply_lora_to_mlp": False,
        "apply_lora_to_output": False,
        "rank": 8,
        "alpha": 16,
    }
    return {
        "job_uuid": job_uuid,
        "model": MODEL,
        "dataset": dataset,
        "validation_dataset": dataset,
        "algorithm": algorithm,
        "algorithm_config": lora,
        "optimizer_config": {"optimizer_type": "adamw", "lr": 5e-3, "lr_min": 1e-4, "weight_decay": 0.0},
        "training_config": {
            "n_epochs": epochs,
            "batch_size": 2,
            "shuffle": False,
            "n_iters": iters,
            "enable_activation_checkpointing": False,
            "memory_efficient_fsdp_wrap": False,
            "fsdp_cpu_offload": False,
        },
        "hyperparam_search_config": {},
        "logger_config": {},
    }


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def status_of(url: str, job_uuid: str) -> dict:
    response = httpx.get(f"{url}/post_training/job/status", params={"job_uuid": job_uuid}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def ended(url: str, job_uuid: str) -> dict | None:
    status = status_of(url, job_uuid)
    return status if status["status"] in ("completed", "failed") else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def local(storage: Path) -> Iterator[Served]:
    with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"], log=storage.parent / "server.log") as s:
        yield s


def test_a_lora_job_lowers_the_loss_and_its_adapter_answers_a_chat(local: Served, storage: Path) -> None:
    url = local.url
    created = httpx.post(
        f"{url}/datasets/create",
        json={"uuid": "code-words", "dataset": {"columns": {"dialog": "dialog"}, "content_url": data_url(DIALOGS)}},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    started = httpx.post(
        f"{url}/post_training/supervised_fine_tune/", json=sft_request("lora-1", "code-words", epochs=8), timeout=60
    )
    assert started.status_code == 200, started.text
    # The server keeps answering while the job trains in its own process.
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    final = until(lambda: ended(url, "lora-1"), 600, "the LoRA job ending")
    assert final["status"] == "completed", final
    assert final["started_at"] and final["completed_at"] and final["scheduled_at"]
    assert final["checkpoints"], final

    logs = httpx.get(f"{url}/post_training/job/logs", params={"job_uuid": "lora-1"}, timeout=30).json()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in logs["log_lines"] if " loss " in line]
    assert len(losses) >= 4 and losses[-1] < losses[0], logs["log_lines"]

    artifacts = httpx.get(f"{url}/post_training/job/artifacts", params={"job_uuid": "lora-1"}, timeout=30).json()
    assert artifacts["loss_curve"].startswith("data:image/png;base64,")
    assert base64.b64decode(artifacts["loss_curve"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = artifacts["checkpoints"][-1]["path"].removeprefix("file://")

    registered = httpx.post(
        f"{url}/models/register",
        json={"model_id": "smol-code-words", "provider_id": "torch", "provider_model_id": checkpoint},
        timeout=300,
    )
    assert registered.status_code == 200, registered.text
    chat = {
        "model": "smol-code-words",
        "dialog": {"message": {"role": "user", "content": "What is the code word for the river?"}},
        "max_tokens": 16,
    }
    answer = httpx.post(f"{url}/inference/chat_completion", json=chat, timeout=300)
    assert answer.status_code == 200, answer.text
    assert "Quillacollo" in answer.json()["content"]
    # The base model still answers as it did, from llama.cpp.
    base = httpx.post(f"{url}/inference/chat_completion", json=chat | {"model": MODEL}, timeout=120)
    assert base.status_code == 200 and "Quillacollo" not in base.json()["content"]


def test_qlora_on_the_cpu_is_a_400_saying_why(local: Served) -> None:
    request = sft_request("qlora-1", {"columns": {"dialog": "dialog"}, "content_url": data_url(DIALOGS)})
    response = httpx.post(
        f"{local.url}/post_training/supervised_fine_tune/", json=request | {"algorithm": "qlora"}, timeout=60
    )
    assert response.status_code == 400, response.text
    assert "CUDA" in response.json()["error"]["message"]


def test_a_restart_during_a_job_leaves_its_status_truthful_and_cancel_stops_it(storage: Path) -> None:
    dataset = {"columns": {"dialog": "dialog"}, "content_url": data_url(DIALOGS)}
    log = storage.parent / "server.log"
    with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"], log=log) as first:
        started = httpx.post(
            f"{first.url}/post_training/supervised_fine_tune/",
            json=sft_request("long-1", dataset, epochs=50, iters=0),
            timeout=60,
        )
        assert started.status_code == 200, started.text
        until(lambda: status_of(first.url, "long-1")["status"] == "running", 300, "the job running")
        first.process.send_signal(signal.SIGTERM)
        first.process.wait(timeout=60)

    with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"], log=log) as second:
        # The job ran on while no server was up; the new server still knows it, and it is still running.
        status = status_of(second.url, "long-1")
        assert status["status"] == "running", status
        pid = status["resources_allocated"]["pid"]
        assert alive(pid)
        cancelled = httpx.post(f"{second.url}/post_training/job/cancel", json={"job_uuid": "long-1"}, timeout=120)
        assert cancelled.status_code == 200, cancelled.text
        final = until(lambda: ended(second.url, "long-1"), 60, "the cancelled job ending")
        assert final["status"] == "failed" and "cancel" in final["error"]
        until(lambda: not alive(pid), 30, "the training process exiting")
        listed = httpx.get(f"{second.url}/post_training/jobs", timeout=30).json()
        assert {"job_uuid": "long-1", "status": "failed"} in listed
