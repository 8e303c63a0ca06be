"""End to end on `llama-stack run local`: the seed's loop on one machine. SmolLM2 generates k answers per prompt,
SmolLM2 as a judge scores them from its token probabilities, top_k keeps the best, the run saves the kept
answers and best-vs-worst pairs as datasets, and post-training fine-tunes SmolLM2 on each (LoRA SFT, DPO)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Served, serving
from test_e2e_training_local import ended, sft_request, until

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Name a color of the sky.", "What do bees make?"]
K = 3


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sdg") / "server.log"


@pytest.fixture(scope="module")
def local(server_log: Path) -> Iterator[Served]:
    storage = server_log.parent / "state"
    with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"], log=server_log) as s:
        yield s


def rows(url: str, uuid: str) -> list[dict]:
    response = httpx.get(f"{url}/datasets/rows", params={"dataset_id": uuid, "limit": 1000}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_generate_score_filter_save_and_train(local: Served, server_log: Path) -> None:
    url = local.url
    body = {
        "prompts": [{"role": "user", "content": p} for p in PROMPTS],
        "filtering_function": "top_k",
        "filtering_params": {"k": 1},
        "num_generations": K,
        "max_tokens": 24,
        "save": {"dataset_uuid": "sdg-sft", "preference_dataset_uuid": "sdg-dpo"},
    }
    response = httpx.post(f"{url}/synthetic_data_generation/generate", json=body, timeout=600)
    assert response.status_code == 200, response.text
    result = response.json()
    stats = result["statistics"]
    assert (stats["prompts"], stats["generations"], stats["kept"]) == (3, 3 * K, 3)
    assert 0.0 <= stats["score_min"] <= stats["score_mean"] <= stats["score_max"] <= 1.0
    assert stats["model"] == "smollm2-135m-instruct" and stats["reward_model"] == "smollm2-judge"
    assert stats["generations_per_second"] > 0
    assert "synthetic data: 3/3 prompts, 9 generations" in server_log.read_text()  # progress in the server's log
    # Each prompt keeps its best-scored answer, a real sampled one.
    for prompt, item in zip(PROMPTS, result["synthetic_data"], strict=True):
        assert item["prompt"]["content"] == prompt
        [kept] = item["k_scored_generations"]
        assert kept["message"]["role"] == "assistant" and kept["message"]["content"].strip()
        assert 0.0 <= kept["score"] <= 1.0

    sft_rows = rows(url, "sdg-sft")
    assert len(sft_rows) == 3 == stats["datasets"]["sft"]["rows"]
    assert [r["dialog"][0]["content"] for r in sft_rows] == PROMPTS
    kept_scores = [item["k_scored_generations"][0]["score"] for item in result["synthetic_data"]]
    assert [r["score"] for r in sft_rows] == kept_scores
    pairs = rows(url, "sdg-dpo")
    assert len(pairs) == stats["datasets"]["preference"]["rows"] >= 1
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)

    # The saved datasets train as they are, by uuid.
    sft = httpx.post(f"{url}/post_training/supervised_fine_tune/", json=sft_request("sdg-lora", "sdg-sft", iters=2))
    assert sft.status_code == 200, sft.text
    dpo_request = {
        "job_uuid": "sdg-dpo-job",
        # Not a file:// checkpoint: the job starts from the trainer's preference_model (SmolLM2); nothing is fetched.
        "finetuned_model": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset": "sdg-dpo",
        "validation_dataset": "sdg-dpo",
        "algorithm": "dpo",
        "algorithm_config": {"reward_scale": 0.1, "reward_clip": 5.0, "epsilon": 0.0, "gamma": 0.0},
        "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-5, "lr_min": 1e-6, "weight_decay": 0.0},
        "training_config": sft_request("x", "x", iters=1)["training_config"],
        "hyperparam_search_config": {},
        "logger_config": {},
    }
    dpo = httpx.post(f"{url}/post_training/preference_optimize/", json=dpo_request)
    assert dpo.status_code == 200, dpo.text
    for job in ("sdg-lora", "sdg-dpo-job"):
        status = until(lambda job=job: ended(url, job), 600, f"job {job} to end")
        assert status["status"] == "completed", json.dumps(status)[:2000]


def test_a_streamed_run_reports_progress_then_the_result(local: Served) -> None:
    body = {
        "prompts": [{"role": "user", "content": p} for p in PROMPTS[:2]],
        "filtering_function": "top_p",
        "filtering_params": {"p": 0.5},
        "num_generations": 2,
        "max_tokens": 8,
        "stream": True,
    }
    with httpx.stream("POST", f"{local.url}/synthetic_data_generation/generate", json=body, timeout=600) as response:
        assert response.status_code == 200
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1]["event"] == "result"
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["prompts_done"] == 2 == progress[-1]["prompts_total"]
    kept = [len(item["k_scored_generations"]) for item in events[-1]["result"]["synthetic_data"]]
    assert all(1 <= n <= 2 for n in kept)
