"""inline::reward-model: tiny reward models (random 2-layer Llamas with a score head, SmolLM2's tokenizer) that
the tests save themselves, served through a stack in this process and checked against transformers run directly.

The reference scores are transformers' own: each (dialog, generation) written by the tokenizer's chat template
as the test spells out the messages, run alone (no padding) through AutoModelForSequenceClassification.
"""

from __future__ import annotations

import asyncio
import functools
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from support import uvicorn_serving
from tiny_models import save_tiny_reward_model

from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.reward_scoring import RewardScoringRequest
from llama_stack.client import LlamaStackClient
from llama_stack.providers.inline.reward_model.config import RewardModelConfig
from llama_stack.providers.inline.reward_model.provider import RewardModelScoring
from llama_stack.server import create_app

PROVIDER = "rewards"
OTHER_PROVIDER = "rewards-b"
BATCH_SIZE = 2


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reward models, saved once: by name, the folder each lies in."""
    root = tmp_path_factory.mktemp("reward-models")
    save_tiny_reward_model(root / "rm-a", seed=0)
    save_tiny_reward_model(root / "rm-b", seed=1)
    save_tiny_reward_model(root / "rm-two", seed=2, num_labels=2)
    save_tiny_reward_model(root / "rm-plain", seed=3, chat_template=False)
    save_tiny_reward_model(root / "rm-nopad", seed=4, pad_token=False)
    save_tiny_reward_model(root / "rm-gpt2", seed=6, architecture="gpt2")
    return root


def entry(name: str, folder: Path, provider: str = PROVIDER, **metadata: Any) -> dict[str, Any]:
    return {
        "model_id": name,
        "provider_id": provider,
        "provider_model_id": str(folder),
        "model_type": "reward",
        "metadata": metadata,
    }


def distribution(
    directory: Path, providers: list[dict[str, Any]], models: list[dict[str, Any]], name: str = "rewards"
) -> Path:
    path = directory / f"{name}.yaml"
    document = {
        "version": 1,
        "name": name,
        "apis": ["reward_scoring"],
        "providers": {"reward_scoring": providers},
        "models": models,
        "storage": {"dir": str(directory / f"{name}-state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def provider_entry(provider_id: str = PROVIDER, **config: Any) -> dict[str, Any]:
    return {
        "provider_id": provider_id,
        "provider_type": "inline::reward-model",
        "config": {"device": "cpu", "batch_size": BATCH_SIZE, **config},
    }


@pytest.fixture(scope="session")
async def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaStackClient]:
    """A stack with two reward-model providers: one serving five models (loaded in the background, as by
    default), the other rm-b."""
    directory = tmp_path_factory.mktemp("reward-stack")
    path = distribution(
        directory,
        [provider_entry(model_roots=[str(models_dir)]), provider_entry(OTHER_PROVIDER)],
        [
            entry("rm-a", models_dir / "rm-a"),
            entry("rm-two", models_dir / "rm-two"),
            entry("rm-plain", models_dir / "rm-plain"),
            entry("rm-nopad", models_dir / "rm-nopad"),
            entry("rm-gpt2", models_dir / "rm-gpt2"),
            entry("rm-b", models_dir / "rm-b", provider=OTHER_PROVIDER),
        ],
    )
    client = await LlamaStackClient.library(path)  # returns once every model has loaded
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def provider(client: LlamaStackClient) -> RewardModelScoring:
    return client.transport.stack.providers[PROVIDER].impl  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ the reference
@functools.cache
def reference_model(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def reference_logits(folder: Path, messages: list[dict[str, str]], max_length: int | None = None) -> list[float]:
    """transformers run directly on the pair alone: the chat template's text (or role: text turns when the
    tokenizer has none), its last ``max_length`` tokens."""
    model, tokenizer = reference_model(folder)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer("\n\n".join(f"{m['role']}: {m['content']}" for m in messages))["input_ids"]
    if max_length is not None:
        ids = ids[-max_length:]
    with torch.inference_mode():
        return [float(x) for x in model(torch.tensor([ids])).logits[0]]


def reference_score(folder: Path, messages: list[dict[str, str]], max_length: int | None = None) -> float:
    logits = reference_logits(folder, messages, max_length)
    return logits[0] if len(logits) == 1 else float(torch.tensor(logits).softmax(-1)[1])


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)


# ------------------------------------------------------------------------------------------ the requests
def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


PROMPTS: list[dict[str, Any]] = [
    {
        "dialog": {"message": user("What is the capital of France?")},
        "k_generations": [assistant("Paris."), assistant("Berlin."), assistant("It is Paris, a city on the Seine.")],
    },
    {
        "dialog": {
            "message": user("And of Italy?"),
            "message_history": [
                {"role": "system", "content": "Answer in one word."},
                user("Capital of Spain?"),
                assistant("Madrid."),
            ],
        },
        "k_generations": [assistant("Rome.")],
    },
    {
        "dialog": {"message": user("Write a haiku about llamas.")},
        "k_generations": [
            assistant("Soft wool on the hills,\nquiet steps in mountain air,\nllamas watch the clouds."),
            assistant("Llamas."),
            assistant("I cannot write poems."),
            assistant("Woolly friends graze slow / Andes wind combs through their fur / a hum, then a spit."),
        ],
    },
]


def messages_of(item: dict[str, Any], generation: dict[str, Any]) -> list[dict[str, str]]:
    dialog = item["dialog"]
    turns = [*dialog.get("message_history", []), dialog["message"], generation]
    return [{"role": m["role"], "content": m["content"]} for m in turns]


def references(folder: Path, prompts: list[dict[str, Any]], max_length: int | None = None) -> list[list[float]]:
    return [[reference_score(folder, messages_of(p, g), max_length) for g in p["k_generations"]] for p in prompts]


async def score(client_or_provider: Any, model: str, prompts: list[dict[str, Any]]) -> list[list[float]]:
    if isinstance(client_or_provider, LlamaStackClient):
        answer = await client_or_provider.reward_scoring.reward_score(model=model, prompt_generations=prompts)
    else:
        request = RewardScoringRequest.model_validate({"model": model, "prompt_generations": prompts})
        answer = await client_or_provider.reward_score(request)
    return [[s.score for s in scored.k_scored_generations] for scored in answer.scored_generations]


def all_close(got: list[list[float]], want: list[list[float]]) -> bool:
    return [len(g) for g in got] == [len(w) for w in want] and all(
        close(a, b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)
    )


# ------------------------------------------------------------------------------------------ scores
async def test_scores_are_the_models_own_per_generation_in_request_order(client, models_dir):
    answer = await client.reward_scoring.reward_score(model="rm-a", prompt_generations=PROMPTS)
    # 8 pairs in batches of 2, of different lengths: padded, and still each the model's score alone.
    got = [[s.score for s in scored.k_scored_generations] for scored in answer.scored_generations]
    assert all_close(got, references(models_dir / "rm-a", PROMPTS))
    assert len({round(s, 4) for row in got for s in row}) == 8  # the generations are told apart
    assert [scored.prompt.content for scored in answer.scored_generations] == [p["dialog"]["message"]["content"] for p in PROMPTS]  # fmt: skip
    assert [s.message.content for s in answer.scored_generations[2].k_scored_generations] == [
        g["content"] for g in PROMPTS[2]["k_generations"]
    ]


@pytest.mark.parametrize("name", ["rm-a", "rm-gpt2"])  # rotary positions, and absolute ones (padding side matters)
@pytest.mark.parametrize("batch_size", [1, 3, 64])
async def test_the_batch_size_does_not_change_a_score(provider, monkeypatch, batch_size, name, models_dir):
    monkeypatch.setattr(provider, "config", provider.config.model_copy(update={"batch_size": batch_size}))
    assert all_close(await score(provider, name, PROMPTS), references(models_dir / name, PROMPTS))


async def test_two_reward_models_in_one_distribution_are_routed_by_model_id(client, models_dir):
    a = await score(client, "rm-a", PROMPTS)
    b = await score(client, "rm-b", PROMPTS)
    assert all_close(a, references(models_dir / "rm-a", PROMPTS))
    assert all_close(b, references(models_dir / "rm-b", PROMPTS))
    assert not any(close(x, y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


async def test_an_unknown_model_is_a_404_naming_the_reward_models(client):
    with pytest.raises(NotFoundError) as error:
        await score(client, "rm-nope", PROMPTS[:1])
    message = error.value.message
    assert "rm-nope" in message and all(name in message for name in ("rm-a", "rm-b", "rm-two"))


async def test_a_two_label_model_scores_the_probability_of_label_1(client, provider, models_dir):
    got = await score(client, "rm-two", PROMPTS)
    assert all(0.0 <= s <= 1.0 for row in got for s in row)
    assert all_close(got, references(models_dir / "rm-two", PROMPTS))
    # metadata.positive_label picks another label, by name or index: its probability, 1 - p(label 1) here.
    await provider.register_model(
        Model.model_validate(entry("rm-two-negative", models_dir / "rm-two", positive_label="LABEL_0"))
    )
    await provider.loaded("rm-two-negative")
    negative = await score(provider, "rm-two-negative", PROMPTS)
    assert all_close(negative, [[1.0 - s for s in row] for row in got])


async def test_a_tokenizer_without_a_chat_template_reads_role_text_turns(client, models_dir):
    got = await score(client, "rm-plain", PROMPTS)
    assert all_close(got, references(models_dir / "rm-plain", PROMPTS))


async def test_a_model_without_a_pad_token_is_scored_too(client, models_dir):
    # No pad token: the model pools at the last position, so padding would change its scores (one pair per pass).
    assert all_close(await score(client, "rm-nopad", PROMPTS), references(models_dir / "rm-nopad", PROMPTS))


async def test_a_long_dialog_loses_its_oldest_tokens_and_keeps_the_generation(provider, models_dir):
    await provider.register_model(Model.model_validate(entry("rm-short", models_dir / "rm-a", max_length=24)))
    await provider.loaded("rm-short")
    long = "Tell me everything about llamas, alpacas, vicunas and guanacos, their wool and their habits. " * 4

    def asked(opening: str, answer: str) -> list[dict[str, Any]]:
        return [{"dialog": {"message": user(long), "message_history": [user(opening)]}, "k_generations": [assistant(answer)]}]  # fmt: skip

    first = await score(provider, "rm-short", asked("Hello there.", "Llamas hum."))
    assert all_close(first, references(models_dir / "rm-a", asked("Hello there.", "Llamas hum."), max_length=24))
    assert first != await score(provider, "rm-a", asked("Hello there.", "Llamas hum."))  # it was truncated
    # What fell off the start does not count; the generation does.
    assert all_close(await score(provider, "rm-short", asked("A different opening entirely.", "Llamas hum.")), first)
    assert not all_close(await score(provider, "rm-short", asked("Hello there.", "Alpacas do not.")), first)


async def test_text_attachments_are_read_and_others_are_a_400_naming_the_field(client, models_dir):
    note = "data:text/plain;base64,TGxhbWFzIGxpdmUgaW4gdGhlIEFuZGVzLg=="  # "Llamas live in the Andes."
    prompts = [
        {
            "dialog": {"message": user(["Where do llamas live?", {"url": note, "mime_type": "text/plain"}])},
            "k_generations": [assistant("In the Andes.")],
        }
    ]
    block = "[Attachment: data:text/plain (inline) (text/plain)]\nLlamas live in the Andes.\n[End of attachment]"
    expected = [[reference_score(models_dir / "rm-a", [user(f"Where do llamas live?\n\n{block}"), assistant("In the Andes.")])]]  # fmt: skip
    assert all_close(await score(client, "rm-a", prompts), expected)
    image = {"url": "data:image/png;base64,iVBORw0KGgo=", "mime_type": "image/png"}
    prompts[0]["k_generations"].append(assistant(["A picture:", image]))
    with pytest.raises(BadRequestError) as error:
        await score(client, "rm-a", prompts)
    assert error.value.param == "prompt_generations[0].k_generations[1].content[1]"
    assert "text-only" in error.value.message


async def test_an_empty_request_and_a_prompt_without_generations_answer_empty(client):
    assert await score(client, "rm-a", []) == []
    assert await score(client, "rm-a", [{"dialog": {"message": user("Hi?")}, "k_generations": []}]) == [[]]


async def test_scoring_runs_off_the_event_loop(provider):
    many = [{"dialog": {"message": user(f"Question {i} about llamas?")}, "k_generations": [assistant("Yes.")] * 8} for i in range(8)]  # fmt: skip
    task = asyncio.create_task(score(provider, "rm-a", many))
    turns = 0
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    assert len(task.result()) == 8
    assert turns > 10


# ------------------------------------------------------------------------------------------ bounds
async def test_more_generations_than_max_pairs_is_a_400_before_any_scoring(provider, monkeypatch):
    monkeypatch.setattr(provider, "config", provider.config.model_copy(update={"max_pairs": 7}))
    with pytest.raises(BadRequestError) as error:
        await score(provider, "rm-a", PROMPTS)
    assert error.value.param == "prompt_generations" and error.value.provider == PROVIDER
    assert "8 generations" in error.value.message and "at most 7" in error.value.message


async def test_a_dialog_counted_once_per_generation_is_bounded_by_max_request_chars(provider, monkeypatch):
    monkeypatch.setattr(provider, "config", provider.config.model_copy(update={"max_request_chars": 1000}))
    dialog = {"message": user("x" * 400)}
    await score(provider, "rm-a", [{"dialog": dialog, "k_generations": [assistant("ok")] * 2}])  # 804 characters
    with pytest.raises(BadRequestError) as error:
        await score(provider, "rm-a", [{"dialog": dialog, "k_generations": [assistant("ok")] * 3}])  # 1206
    assert error.value.param == "prompt_generations" and "max_request_chars" in error.value.message


async def test_oversized_requests_over_http_are_400s_naming_the_field(client, provider, monkeypatch):
    monkeypatch.setattr(provider, "config", provider.config.model_copy(update={"max_pairs": 2}))
    generations = [assistant("a")] * 129  # past the API's own bound of 128 per prompt
    wide = {"model": "rm-a", "prompt_generations": [{"dialog": {"message": user("q")}, "k_generations": generations}]}
    app = create_app(client.transport.stack)  # type: ignore[attr-defined]
    async with uvicorn_serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        too_many = await http.post("/reward_scoring/score", json={"model": "rm-a", "prompt_generations": PROMPTS})
        too_wide = await http.post("/reward_scoring/score", json=wide)
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "prompt_generations"
    assert too_wide.status_code == 422, too_wide.text  # the schema's own bound: a validation error
    assert too_wide.json()["error"]["param"] == "prompt_generations[0].k_generations"


# ------------------------------------------------------------------------------------------ loading
def standalone(**config: Any) -> RewardModelScoring:
    return RewardModelScoring(RewardModelConfig(device="cpu", **config), "standalone")


def model(name: str, folder: Path, **fields: Any) -> Model:
    return Model.model_validate({**entry(name, folder, provider="standalone"), **fields})


async def test_a_model_loading_in_the_background_answers_503_then_scores(models_dir):
    background = standalone()
    try:
        registered = await background.register_model(model("later", models_dir / "rm-a"))
        assert registered.context_length == 2048  # the config's max_length, read before anything loads
        # Nothing has let the event loop turn since the load began: its outcome cannot have arrived yet.
        assert background.model_status("later") == "loading"
        with pytest.raises(ServiceUnavailableError) as error:
            await score(background, "later", PROMPTS[:1])
        assert error.value.retry_after is not None and error.value.code == "model_loading"
        await background.loaded("later")
        assert background.model_status("later") == "ready"
        assert all_close(await score(background, "later", PROMPTS[:1]), references(models_dir / "rm-a", PROMPTS[:1]))
    finally:
        await background.shutdown()


async def test_the_models_own_input_limit_caps_the_tokens_per_pair(models_dir):
    provider = standalone(max_length=4000)
    try:
        llama = await provider.register_model(model("llama", models_dir / "rm-a"))
        gpt2 = await provider.register_model(model("gpt2", models_dir / "rm-gpt2", metadata={"max_length": 64}))
        assert (llama.context_length, gpt2.context_length) == (4000, 64)
        gpt2_whole = await provider.register_model(model("gpt2-whole", models_dir / "rm-gpt2"))
        assert gpt2_whole.context_length == 1024  # GPT-2's n_positions
    finally:
        await provider.shutdown()


async def test_a_request_scoring_when_the_provider_shuts_down_ends_with_503_at_its_next_batch(models_dir):
    provider = standalone(batch_size=1)
    await provider.register_model(model("busy", models_dir / "rm-a"))
    await provider.loaded("busy")
    worker = provider._slots["busy"].worker
    many = [
        {"dialog": {"message": user(f"Question {i}?")}, "k_generations": [assistant("Yes.")] * 64} for i in range(16)
    ]
    task = asyncio.create_task(score(provider, "busy", many))  # 1024 forward passes: many seconds
    deadline = asyncio.get_running_loop().time() + 30
    while not worker.jobs and not task.done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert worker.jobs, "the request never reached the model's worker"
    await provider.shutdown()
    with pytest.raises(ServiceUnavailableError, match="shutting down"):
        await task


async def test_a_model_that_fails_to_load_answers_502_with_the_reason(models_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(models_dir / "rm-a", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file at all")
    background = standalone()
    try:
        await background.register_model(model("broken", broken))
        with pytest.raises(ProviderError) as failed:
            await background.loaded("broken")
        assert background.model_status("broken") == "failed"
        with pytest.raises(ProviderError) as error:
            await score(background, "broken", PROMPTS[:1])
        assert error.value.code == "model_load_failed" and str(broken) in error.value.message
        assert error.value.message == failed.value.message
    finally:
        await background.shutdown()


async def test_a_model_that_fails_to_load_fails_the_start_when_loads_are_awaited(models_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(models_dir / "rm-a", broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    path = distribution(tmp_path, [provider_entry(load_in_background=False)], [entry("broken", broken)])
    with pytest.raises(ProviderError) as error:
        await LlamaStackClient.library(path)
    assert "'broken'" in error.value.message and "could not load" in error.value.message


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("outside-roots", "outside the provider's model_roots"),
        ("missing", "does not exist"),
        ("pickle-only", "pickles only (pytorch_model.bin)"),
        ("relative", "must be an absolute path"),
        ("not-reward", "set model_type: reward"),
        ("unknown-metadata", "unknown metadata key(s) 'postive_label'"),
    ],
)
async def test_a_bad_model_entry_fails_the_start_naming_the_model(models_dir, tmp_path, case, expected):
    roots = tmp_path / "roots"
    roots.mkdir()
    folder, fields, metadata = roots / "model", {}, {}
    if case == "outside-roots":
        folder = models_dir / "rm-a"
    elif case == "pickle-only":
        shutil.copytree(models_dir / "rm-a", folder)
        state = reference_model(models_dir / "rm-a")[0].state_dict()
        torch.save(state, folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    elif case == "relative":
        folder = Path("relative/model")
    elif case == "not-reward":
        shutil.copytree(models_dir / "rm-a", folder)
        fields = {"model_type": "llm"}
    elif case == "unknown-metadata":
        shutil.copytree(models_dir / "rm-a", folder)
        metadata = {"postive_label": 1}
    path = distribution(
        tmp_path, [provider_entry(model_roots=[str(roots)])], [{**entry("bad", folder, **metadata), **fields}]
    )
    with pytest.raises(BadRequestError) as error:
        await LlamaStackClient.library(path)
    assert error.value.message.startswith("model 'bad': ") and expected in error.value.message


async def test_a_model_with_more_than_two_labels_needs_its_positive_label(tmp_path):
    folder = save_tiny_reward_model(tmp_path / "three", seed=5, num_labels=3)
    provider = standalone(model_roots=[str(tmp_path)])
    try:
        with pytest.raises(BadRequestError) as error:
            await provider.register_model(model("three", folder))
        assert error.value.param == "metadata.positive_label" and "3 labels" in error.value.message
        with pytest.raises(BadRequestError, match="not a label of the model"):
            await provider.register_model(model("three", folder, metadata={"positive_label": 3}))
        await provider.register_model(model("three", folder, metadata={"positive_label": 2}))
        await provider.loaded("three")
        logits = reference_logits(folder, messages_of(PROMPTS[0], PROMPTS[0]["k_generations"][0]))
        (got,) = (await score(provider, "three", PROMPTS[:1]))[0][:1]
        assert close(got, float(torch.tensor(logits).softmax(-1)[2]))
        with pytest.raises(ConflictError):  # the same id from another folder
            await provider.register_model(model("three", tmp_path))
    finally:
        await provider.shutdown()
