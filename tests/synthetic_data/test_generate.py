"""inline::synthetic-data with canned providers (tests/sdg_support.py): every generation and score is known, so
what is kept, what is saved and what the statistics say can be checked exactly."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from sdg_support import CANNED_PLUGIN, MODEL, SCORER, sdg_distribution
from support import ReplayPlugin, uvicorn_serving

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, ProviderError
from llama_stack.client import LlamaStackClient
from llama_stack.plugins import discover_providers
from llama_stack.server import create_app

CAPITAL = "What is the capital of France?"
COLOR = "What color is the sky?"
SCRIPTS = {
    CAPITAL: ["Paris. score=0.9", "Lyon. score=0.2", "Berlin. score=0.1", "Paris! score=0.8"],
    COLOR: ["Blue. score=0.7", "Green. score=0.3", "Blue! score=0.7", "Red. score=0.0"],
}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def registry():
    return discover_providers(extra_plugins=[ReplayPlugin(), CANNED_PLUGIN])


@pytest.fixture
async def make_client(tmp_path, registry):
    clients = []

    async def make(scripts: dict[str, list[str]] = SCRIPTS, **options: Any) -> LlamaStackClient:
        client = await LlamaStackClient.library(sdg_distribution(tmp_path, scripts, **options), registry=registry)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def texts(result) -> list[list[str]]:
    return [[g.message.content for g in item.k_scored_generations] for item in result.synthetic_data]


async def test_top_k_keeps_each_prompts_best_generations(make_client):
    client = await make_client()
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR)],
        filtering_function="top_k",
        num_generations=4,
        filtering_params={"k": 2},
    )
    assert texts(result) == [["Paris. score=0.9", "Paris! score=0.8"], ["Blue. score=0.7", "Blue! score=0.7"]]
    assert [item.prompt.content for item in result.synthetic_data] == [CAPITAL, COLOR]
    assert [g.score for g in result.synthetic_data[0].k_scored_generations] == [0.9, 0.8]
    stats = result.statistics
    assert (stats["prompts"], stats["generations"], stats["kept"], stats["dropped"]) == (2, 8, 4, 4)
    assert stats["score_min"] == 0.0 and stats["score_max"] == 0.9
    assert stats["score_mean"] == pytest.approx((0.9 + 0.2 + 0.1 + 0.8 + 0.7 + 0.3 + 0.7 + 0.0) / 8)
    assert stats["kept_score_mean"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.7) / 4)
    assert stats["batched"] is True and stats["seconds"] >= 0
    assert (stats["model"], stats["reward_model"], stats["filtering_function"]) == (MODEL, SCORER, "top_k")


async def test_generations_are_batched_and_sampled_when_the_provider_batches(make_client):
    client = await make_client(sdg_config={"batch_size": 4})
    await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR), user("Hi?")], filtering_function="none", num_generations=2
    )
    canned = client.transport.stack.providers["canned"].impl
    # batch_size 4 with k=2: two prompts per batch (the first call is the empty batch that checks the model).
    sizes = [len(b.batch_dialogs) for b in canned.batches]
    assert sizes == [0, 4, 2]
    assert canned.calls == []
    batch = canned.batches[1]
    assert batch.sampling_params.strategy == "top_p" and batch.sampling_params.temperature == 0.8
    assert [d.message.content for d in batch.batch_dialogs] == [CAPITAL, CAPITAL, COLOR, COLOR]


async def test_without_batches_each_generation_is_its_own_call(make_client):
    client = await make_client(batches=False)
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL)], filtering_function="none", num_generations=3, max_tokens=17
    )
    canned = client.transport.stack.providers["canned"].impl
    assert len(canned.calls) == 3
    assert {c.max_tokens for c in canned.calls} == {17}
    assert texts(result) == [SCRIPTS[CAPITAL][:3]]
    assert result.statistics["batched"] is False


async def test_a_seed_gives_each_generation_its_own_seed(make_client):
    client = await make_client()  # the provider batches, but one seed for a whole batch would repeat one answer
    sampling = {"strategy": "top_p", "temperature": 0.7, "seed": 100}
    await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR)], filtering_function="none", num_generations=2, sampling_params=sampling
    )
    canned = client.transport.stack.providers["canned"].impl
    assert [c.sampling_params.seed for c in canned.calls] == [100, 101, 102, 103]
    assert canned.batches == []


async def test_the_scorer_sees_each_prompt_with_its_generations(make_client):
    client = await make_client()
    await client.synthetic_data_generation.generate(prompts=[user(COLOR)], filtering_function="none", num_generations=2)
    scorer = client.transport.stack.providers["scorer"].impl
    scored = [r for r in scorer.requests if r.prompt_generations]
    assert len(scored) == 1 and scored[0].model == SCORER
    item = scored[0].prompt_generations[0]
    assert item.dialog.message.content == COLOR
    assert [g.role.value for g in item.k_generations] == ["assistant", "assistant"]
    assert [g.content for g in item.k_generations] == SCRIPTS[COLOR][:2]


async def test_each_filter_is_applied_per_prompt(make_client):
    client = await make_client()
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR)],
        filtering_function="sigmoid",
        num_generations=4,
        filtering_params={"center": 0.5, "temperature": 1e-4},
    )
    assert texts(result) == [
        ["Paris. score=0.9", "Paris! score=0.8"],
        ["Blue. score=0.7", "Blue! score=0.7"],
    ]


async def test_a_prompt_with_nothing_kept_is_still_answered(make_client):
    client = await make_client()
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR)],
        filtering_function="sigmoid",
        num_generations=4,
        filtering_params={"center": 0.85, "temperature": 1e-4},
    )
    assert texts(result) == [["Paris. score=0.9"], []]
    assert result.statistics["kept"] == 1 and result.statistics["dropped"] == 7


async def test_no_prompts_is_an_empty_run(make_client):
    client = await make_client()
    result = await client.synthetic_data_generation.generate(prompts=[], filtering_function="top_k")
    assert result.synthetic_data == []
    assert result.statistics["generations"] == 0 and result.statistics["score_mean"] is None


async def test_the_provider_defaults_apply_when_the_request_names_nothing(make_client):
    client = await make_client(sdg_config={"num_generations": 3})
    result = await client.synthetic_data_generation.generate(prompts=[user(CAPITAL)], filtering_function="none")
    assert len(result.synthetic_data[0].k_scored_generations) == 3


# -------------------------------------------------------------------------------------------- saving datasets


async def rows_of(client: LlamaStackClient, uuid: str) -> list[dict[str, Any]]:
    page = await client.datasets.get_dataset_rows(dataset_id=uuid, limit=1000)
    return page.rows


async def test_kept_generations_and_preference_pairs_become_datasets(make_client):
    client = await make_client()
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR)],
        filtering_function="top_k",
        num_generations=4,
        filtering_params={"k": 1},
        save={"dataset_uuid": "sft-1", "preference_dataset_uuid": "dpo-1"},
    )
    assert result.statistics["datasets"] == {
        "sft": {"uuid": "sft-1", "rows": 2, "saved": True},
        "preference": {"uuid": "dpo-1", "rows": 2, "saved": True},
    }
    sft = await client.datasets.get_dataset(dataset_id="sft-1")
    assert sft.columns == {"dialog": "dialog", "score": "number"}
    assert await rows_of(client, "sft-1") == [
        {"dialog": [user(CAPITAL), {"role": "assistant", "content": "Paris. score=0.9"}], "score": 0.9},
        {"dialog": [user(COLOR), {"role": "assistant", "content": "Blue. score=0.7"}], "score": 0.7},
    ]
    pairs = await rows_of(client, "dpo-1")
    # Best against worst among all four (the filter kept one): ties go to the earliest best and the latest worst.
    assert pairs[0]["chosen"][-1]["content"] == "Paris. score=0.9"
    assert pairs[0]["rejected"][-1]["content"] == "Berlin. score=0.1"
    assert pairs[1]["chosen"][-1]["content"] == "Blue. score=0.7"
    assert pairs[1]["rejected"][-1]["content"] == "Red. score=0.0"
    assert all(p["chosen"][0] == p["rejected"][0] for p in pairs)
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (0.9, 0.1)
    dataset = await client.datasets.get_dataset(dataset_id="dpo-1")
    assert dataset.metadata["model"] == MODEL and dataset.metadata["filtering_function"] == "top_k"


async def test_prompts_whose_generations_all_score_the_same_make_no_pair(make_client):
    scripts = {CAPITAL: ["A score=0.5", "B score=0.5"], COLOR: ["C score=0.5", "D score=0.6"]}
    client = await make_client(scripts)
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL), user(COLOR)],
        filtering_function="none",
        num_generations=2,
        save={"preference_dataset_uuid": "pairs"},
    )
    assert result.statistics["datasets"]["preference"]["rows"] == 1
    assert [p["chosen"][-1]["content"] for p in await rows_of(client, "pairs")] == ["D score=0.6"]


async def test_nothing_to_save_is_reported_not_an_error(make_client):
    client = await make_client()
    result = await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL)],
        filtering_function="sigmoid",
        num_generations=2,
        filtering_params={"center": 5.0, "temperature": 1e-4},
        save={"dataset_uuid": "empty"},
    )
    assert result.statistics["datasets"]["sft"] == {
        "uuid": "empty",
        "rows": 0,
        "saved": False,
        "reason": "no generation was kept",
    }
    with pytest.raises(NotFoundError):
        await client.datasets.get_dataset(dataset_id="empty")


async def test_a_taken_dataset_uuid_is_refused_before_any_generation(make_client):
    client = await make_client()
    await client.synthetic_data_generation.generate(
        prompts=[user(CAPITAL)], filtering_function="none", num_generations=2, save={"dataset_uuid": "taken"}
    )
    canned = client.transport.stack.providers["canned"].impl
    before = len(canned.batches)
    with pytest.raises(ConflictError) as caught:
        await client.synthetic_data_generation.generate(
            prompts=[user(CAPITAL)], filtering_function="none", save={"dataset_uuid": "taken"}
        )
    assert caught.value.param == "save.dataset_uuid" and "exists already" in caught.value.message
    assert len(canned.batches) == before + 1  # the empty batch that checks the model; nothing generated


async def test_save_without_a_datasets_api_is_a_400(make_client):
    client = await make_client(with_datasets=False)
    with pytest.raises(BadRequestError) as caught:
        await client.synthetic_data_generation.generate(
            prompts=[user(CAPITAL)], filtering_function="none", save={"dataset_uuid": "x"}
        )
    assert caught.value.param == "save" and "datasets API" in caught.value.message


@pytest.mark.parametrize(
    ("save", "param"),
    [({}, "save"), ({"dataset_uuid": "same", "preference_dataset_uuid": "same"}, "save.preference_dataset_uuid")],
)
async def test_save_settings_that_save_nothing_or_twice_are_refused(make_client, save, param):
    client = await make_client()
    with pytest.raises(BadRequestError) as caught:
        await client.synthetic_data_generation.generate(prompts=[user(CAPITAL)], filtering_function="none", save=save)
    assert caught.value.param == param


# ---------------------------------------------------------------------------------------------------- mistakes


async def test_an_unknown_model_names_what_is_served(make_client):
    client = await make_client()
    with pytest.raises(NotFoundError) as caught:
        await client.synthetic_data_generation.generate(
            prompts=[user(CAPITAL)], filtering_function="none", model="gpt-9"
        )
    assert MODEL in caught.value.message and caught.value.param == "model"


async def test_an_unknown_reward_model_is_refused_before_generating(make_client, tmp_path):
    client = await make_client()
    canned = client.transport.stack.providers["canned"].impl
    # One reward scoring provider serves any name (it decides): the canned scorer scores anything. With the
    # reward model named but the generator missing, nothing is scored either.
    with pytest.raises(NotFoundError):
        await client.synthetic_data_generation.generate(
            prompts=[user(CAPITAL)], filtering_function="none", model="nope", reward_scoring={"model": SCORER}
        )
    assert canned.batches == []


async def test_a_prompt_must_be_a_user_message(make_client):
    client = await make_client()
    with pytest.raises(BadRequestError) as caught:
        await client.synthetic_data_generation.generate(
            prompts=[user(CAPITAL), {"role": "assistant", "content": "Hi"}], filtering_function="none"
        )
    assert caught.value.param == "prompts[1].role"


async def test_too_many_generations_are_refused_before_work(make_client):
    client = await make_client(sdg_config={"max_generations": 10})
    with pytest.raises(BadRequestError) as caught:
        await client.synthetic_data_generation.generate(
            prompts=[user(f"Q{i}") for i in range(4)], filtering_function="none", num_generations=3
        )
    assert "12 generations" in caught.value.message and "10" in caught.value.message


async def test_a_nan_score_fails_the_run_naming_the_reward_model(make_client):
    client = await make_client({CAPITAL: ["x score=nan"]})
    with pytest.raises(ProviderError) as caught:
        await client.synthetic_data_generation.generate(prompts=[user(CAPITAL)], filtering_function="top_k")
    assert SCORER in caught.value.message and "nan" in caught.value.message


# -------------------------------------------------------------------------------------------------- over HTTP


@pytest.fixture
async def http(tmp_path, registry):
    client = await LlamaStackClient.library(
        sdg_distribution(tmp_path, SCRIPTS, sdg_config={"batch_size": 4, "progress_interval_s": 1e-9}),
        registry=registry,
    )
    app = create_app(client.transport.stack)
    async with uvicorn_serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as session:
        yield session
    await client.aclose()


async def test_streamed_runs_send_progress_then_the_result(http, caplog):
    body = {
        "prompts": [user(CAPITAL), user(COLOR), user("Hi?")],
        "filtering_function": "top_k",
        "num_generations": 2,
        "stream": True,
    }
    with caplog.at_level(logging.INFO, logger="llama_stack.providers.inline.synthetic_data"):
        async with http.stream("POST", "/synthetic_data_generation/generate", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[5:]) async for line in response.aiter_lines() if line.startswith("data:")]
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert [p["prompts_done"] for p in progress] == [2, 3]
    assert [p["generations_done"] for p in progress] == [4, 6]
    assert all(p["prompts_total"] == 3 for p in progress)
    assert events[-1]["event"] == "result"
    assert [len(item["k_scored_generations"]) for item in events[-1]["result"]["synthetic_data"]] == [1, 1, 1]
    assert any("2/3 prompts" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompts": "hi", "filtering_function": "none"}, "prompts"),
        ({"prompts": [], "filtering_function": "best"}, "filtering_function"),
        ({"prompts": [], "filtering_function": "top_k", "filtering_params": {"k": 0}}, "filtering_params.k"),
        ({"prompts": [], "filtering_function": "top_p", "filtering_params": {"p": 2}}, "filtering_params.p"),
        ({"prompts": [], "filtering_function": "none", "num_generations": 1000}, "num_generations"),
        ({"prompts": [user("x")] * 1025, "filtering_function": "none"}, "prompts"),
        ({"prompts": [], "filtering_function": "none", "reward_scoring": {"model": 3}}, "reward_scoring.model"),
        ({"prompts": [], "filtering_function": "none", "save": {"dataset_uuid": "x" * 300}}, "save.dataset_uuid"),
    ],
)
async def test_bad_requests_name_the_field(http, body, param):
    response = await http.post("/synthetic_data_generation/generate", json=body)
    assert response.status_code == 422, response.text  # the server's status for a body that fails its schema
    assert response.json()["error"]["param"] == param
