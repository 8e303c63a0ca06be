"""Start-up: chat is served while an embedding model still loads in the background; until it is loaded its
embeddings and the memory banks that need them answer 503 with Retry-After; /health shows each model's
readiness; a model that fails to load is reported, not retried.

The real ``inline::sentence-transformers`` provider runs here, its model load replaced by one that waits for
the test to open a gate (and then answers a tiny fake encoder, or fails): no torch, and no timing guesses.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from memory_support import MINILM, document, faiss_provider, memory_distribution, models

from llama_stack.apis.errors import ProviderError
from llama_stack.apis.inspect import Model
from llama_stack.client import LlamaStackClient
from llama_stack.providers.inline.sentence_transformers import provider as st_provider
from llama_stack.providers.utils.background_load import LOADING_RETRY_AFTER_SECONDS
from llama_stack.readiness import models_readiness
from llama_stack.resolver import Stack
from llama_stack.server import create_app

PROVIDER = "sentence-transformers"
CHAT = {"model": "replay-model", "dialog": {"message": {"role": "user", "content": "hello"}}}
EMBED = {"model": MINILM, "contents": ["a sentence to embed"]}


class FakeEncoder:
    """What the provider calls on a loaded SentenceTransformer: three numbers per text."""

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return np.array([[float(len(text)), 1.0, 0.5] for text in texts], dtype=np.float32)


@dataclass
class GatedLoad:
    """Stands in for the provider's load: counts its calls, waits for ``gate``, then loads or raises ``failure``."""

    gate: threading.Event = field(default_factory=threading.Event)
    failure: Exception | None = None
    calls: int = 0

    def __call__(self, provider: Any, model_id: str, path: Path) -> Any:
        self.calls += 1
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        if self.failure is not None:
            raise self.failure
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-encoder")
        return st_provider._Encoder(FakeEncoder(), 3, "cpu", executor)  # type: ignore[arg-type]


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> GatedLoad:
    """The provider's loads go through a fresh gate (as a method: the provider is passed as ``self``)."""
    load = GatedLoad()
    monkeypatch.setattr(
        st_provider.SentenceTransformersInference,
        "_load",
        lambda provider, model_id, path: load(provider, model_id, path),
    )
    yield load
    load.gate.set()  # a test that failed before opening it leaves no thread waiting


@dataclass
class Served:
    stack: Stack
    http: httpx.AsyncClient

    @property
    def embedder(self) -> st_provider.SentenceTransformersInference:
        return self.stack.providers[PROVIDER].impl

    async def health(self) -> dict[str, Any]:
        response = await self.http.get("/health")
        assert response.status_code == 200
        return response.json()


async def serve(tmp_path: Path, replay_registry: Any, **st_config: Any) -> Served:
    inference = [
        {"provider_id": PROVIDER, "provider_type": "inline::sentence-transformers", "config": st_config},
        {"provider_id": "replay", "provider_type": "inline::replay", "config": {}},
    ]
    path = memory_distribution(tmp_path, faiss_provider(), inference=inference, model_list=models())
    stack = Stack.from_distribution(path, registry=replay_registry)
    await stack.start()
    transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
    return Served(stack, httpx.AsyncClient(transport=transport, base_url="http://test"))


@pytest.fixture
async def served(tmp_path: Path, replay_registry: Any, gated: GatedLoad) -> AsyncIterator[Served]:
    server = await serve(tmp_path, replay_registry)
    yield server
    gated.gate.set()
    await server.http.aclose()
    await server.stack.shutdown()


def assert_loading_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(LOADING_RETRY_AFTER_SECONDS)
    error = response.json()["error"]
    assert error["code"] == "model_loading" and error["provider"] == PROVIDER
    assert MINILM in error["message"] and "still loading" in error["message"]


async def test_chat_is_served_while_the_embedding_model_loads(served: Served):
    # stack.start() returned with the embedding model's load still waiting at the gate.
    health = await served.health()
    assert health["status"] == "ok"
    assert health["models"][MINILM] == "loading"
    assert health["models"]["replay-model"] == "ready"  # replay has no model_status: ready once started

    chat = await served.http.post("/inference/chat_completion", json=CHAT)
    assert chat.status_code == 200 and chat.json()["content"] == "The capital of France is Paris."
    assert_loading_503(await served.http.post("/inference/embeddings", json=EMBED))
    openai = await served.http.post("/v1/embeddings", json={"model": MINILM, "input": "hi"})
    assert openai.status_code == 503 and openai.headers["retry-after"] == "2"
    # Another embedding model of the same server is served meanwhile.
    other = await served.http.post("/inference/embeddings", json={**EMBED, "model": "replay-embedder"})
    assert other.status_code == 200


async def test_memory_banks_that_embed_answer_503_until_the_model_is_loaded(served: Served, gated: GatedLoad):
    bank = {"bank_uuid": "notes", "bank_name": "Notes"}
    assert_loading_503(await served.http.post("/memory_banks/register", json=bank))
    # What needs no embedding is served meanwhile.
    listed = await served.http.get("/memory_banks/get")
    assert listed.status_code == 200 and listed.text == ""

    gated.gate.set()
    await served.embedder.loaded(MINILM)

    assert (await served.health())["models"][MINILM] == "ready"
    assert (await served.http.post("/memory_banks/register", json=bank)).status_code == 200
    docs = [document("a", "Llamas live in the Andes."), document("b", "Bread needs flour.")]
    assert (await served.http.post("/memory_bank/insert", params={"bank_uuid": "notes"}, json=docs)).status_code == 200
    answer = await served.http.post("/memory_bank/query", params={"bank_uuid": "notes"}, json={"query": "x", "k": 2})
    assert answer.status_code == 200 and len(answer.json()["chunks"]) == 2
    vectors = await served.http.post("/inference/embeddings", json=EMBED)
    assert vectors.json() == {"embeddings": [[19.0, 1.0, 0.5]]}


async def test_a_model_that_fails_to_load_is_reported_and_not_retried(served: Served, gated: GatedLoad):
    gated.failure = OSError("model.safetensors is truncated")
    gated.gate.set()
    with pytest.raises(ProviderError):
        await served.embedder.loaded(MINILM)

    health = await served.health()
    assert health["status"] == "ok" and health["models"][MINILM] == "failed"
    assert health["models"]["replay-model"] == "ready"
    for _ in range(2):  # asked again: the same answer, no second load
        response = await served.http.post("/inference/embeddings", json=EMBED)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["provider"] == PROVIDER and error["code"] == "model_load_failed"
        assert "OSError: model.safetensors is truncated" in error["message"] and MINILM in error["message"]
    bank = await served.http.post("/memory_banks/register", json={"bank_uuid": "b", "bank_name": "B"})
    assert bank.status_code == 502 and "truncated" in bank.json()["error"]["message"]
    chat = await served.http.post("/inference/chat_completion", json=CHAT)
    assert chat.status_code == 200
    assert gated.calls == 1


async def test_loading_before_serving_fails_the_start_naming_the_error(tmp_path, replay_registry, gated):
    gated.failure = OSError("no weights here")
    gated.gate.set()
    with pytest.raises(ProviderError) as error:
        await serve(tmp_path, replay_registry, load_in_background=False)
    assert MINILM in error.value.message and "OSError: no weights here" in error.value.message


async def test_loading_before_serving_serves_every_model_once_started(tmp_path, replay_registry, gated):
    gated.gate.set()
    server = await serve(tmp_path, replay_registry, load_in_background=False)
    try:
        assert set((await server.health())["models"].values()) == {"ready"}
        assert (await server.http.post("/inference/embeddings", json=EMBED)).status_code == 200
    finally:
        await server.http.aclose()
        await server.stack.shutdown()


async def test_the_model_list_has_the_input_limit_before_the_model_loads(served: Served):
    listed = {m["model_id"]: m for m in (await served.http.get("/models/list")).json()}
    assert listed[MINILM]["context_length"] == 256  # MiniLM's sentence_bert_config.json


def test_building_the_provider_imports_neither_torch_nor_sentence_transformers():
    script = (
        "import asyncio, sys\n"
        "from llama_stack.plugins import ProviderContext\n"
        "from llama_stack.providers.inline.sentence_transformers.config import SentenceTransformersConfig\n"
        "from llama_stack.providers.inline.sentence_transformers.provider import build\n"
        "context = ProviderContext(provider_id='st', storage_dir='.', deps={})\n"
        "asyncio.run(build(SentenceTransformersConfig(), context))\n"
        "print(sorted({'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stderr


# ----------------------------------------------------------------------------------------------------
# How readiness is read from providers (stack/readiness.py)


class SyncStatus:
    def model_status(self, model_id: str) -> str:
        return {"a": "ready", "b": "loading"}[model_id]


class AsyncStatus:
    async def model_status(self, model_id: str) -> str:
        return "failed"


class BrokenStatus:
    def model_status(self, model_id: str) -> str:
        raise RuntimeError("status unknown")


class OddStatus:
    def model_status(self, model_id: str) -> str:
        return "warming up"


async def test_readiness_is_what_each_provider_reports_and_ready_without_a_report():
    providers = {"sync": SyncStatus(), "async": AsyncStatus(), "plain": object(), "broken": BrokenStatus()}
    providers["odd"] = OddStatus()
    served = [
        Model(model_id="a", provider_id="sync"),
        Model(model_id="b", provider_id="sync"),
        Model(model_id="c", provider_id="async"),
        Model(model_id="d", provider_id="plain"),
        Model(model_id="e", provider_id="broken"),
        Model(model_id="f", provider_id="odd"),
    ]
    assert await models_readiness(served, providers) == {
        "a": "ready",
        "b": "loading",
        "c": "failed",
        "d": "ready",
        "e": "failed",  # a provider that cannot say is not claimed ready
        "f": "failed",
    }


def background_distribution(tmp_path: Path) -> Path:
    inference = [
        {"provider_id": PROVIDER, "provider_type": "inline::sentence-transformers", "config": {}},
        {"provider_id": "replay", "provider_type": "inline::replay", "config": {}},
    ]
    return memory_distribution(tmp_path, faiss_provider(), inference=inference, model_list=models())


async def test_the_library_client_returns_once_background_models_are_loaded(tmp_path, replay_registry, gated):
    starting = asyncio.create_task(
        LlamaStackClient.library(background_distribution(tmp_path), registry=replay_registry)
    )
    # The stack is up (its embedder registered and loading) while library() still waits on the load.
    while not gated.calls:
        await asyncio.sleep(0.01)  # polls the load's own counter; no outcome depends on the delay
    assert not starting.done()
    gated.gate.set()
    client = await starting
    try:
        answer = await client.inference.embeddings(**EMBED)
        assert len(answer.embeddings[0]) == 3
    finally:
        await client.aclose()


async def test_the_library_client_fails_its_start_when_a_model_cannot_load(tmp_path, replay_registry, gated):
    gated.failure = RuntimeError("weights are corrupt")
    gated.gate.set()
    with pytest.raises(ProviderError) as error:
        await LlamaStackClient.library(background_distribution(tmp_path), registry=replay_registry)
    assert "weights are corrupt" in error.value.message and error.value.provider == PROVIDER
