"""Embeddings and rerank: routed by model type, over our routes and OpenAI's /v1/embeddings."""

from __future__ import annotations

import httpx
import openai
import pytest
from support import uvicorn_serving, write_replay_distribution

from llama_stack.apis.errors import NotSupportedError
from llama_stack.apis.inference import EmbeddingsRequest
from llama_stack.apis.inspect import Model
from llama_stack.inference_routing import InferenceRouter
from llama_stack.resolver import Stack
from llama_stack.routing import RoutedProvider
from llama_stack.server import create_app


@pytest.fixture(scope="module")
async def server(tmp_path_factory, replay_registry):
    stack = Stack.from_distribution(
        write_replay_distribution(tmp_path_factory.mktemp("embed")), registry=replay_registry
    )
    await stack.start()
    async with uvicorn_serving(create_app(stack)) as url:
        yield stack, url
    await stack.shutdown()


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=server[1]) as client:
        yield client


async def test_embeddings_route_answers_one_vector_per_text_in_order(http):
    response = await http.post(
        "/inference/embeddings", json={"model": "replay-embedder", "contents": ["a cat", "banana"]}
    )
    assert response.status_code == 200
    assert response.json()["embeddings"] == [[5.0, 2.0, 2.0, 1.0], [6.0, 1.0, 3.0, 1.0]]


async def test_a_chat_model_on_the_embeddings_route_is_a_400_naming_the_embedding_models(http):
    response = await http.post("/inference/embeddings", json={"model": "replay-model", "contents": ["x"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "model_type 'llm'" in error["message"] and "replay-embedder" in error["message"]
    assert error["param"] == "model"


async def test_an_embedding_model_cannot_chat(http):
    dialog = {"message": {"role": "user", "content": "hi"}}
    response = await http.post("/inference/chat_completion", json={"model": "replay-embedder", "dialog": dialog})
    assert response.status_code == 400
    assert "model_type 'embedding'" in response.json()["error"]["message"]


async def test_rerank_orders_documents_by_relevance(http):
    documents = ["llamas eat grass", "the capital of france", "france is a country with a capital"]
    body = {"model": "replay-reranker", "query": "capital of france", "documents": documents, "top_n": 2}
    response = await http.post("/inference/rerank", json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["index"] for r in results] == [1, 2]
    assert results[0]["relevance_score"] == 1.0


async def test_empty_contents_are_a_422_naming_the_field(http):
    response = await http.post("/inference/embeddings", json={"model": "replay-embedder", "contents": []})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "contents"


async def test_openai_embeddings_with_the_official_client_float_and_base64(server):
    client = openai.AsyncOpenAI(base_url=f"{server[1]}/v1", api_key="unused")
    # The SDK asks for base64 by default and decodes it; the numbers must survive the round trip.
    default = await client.embeddings.create(model="replay-embedder", input=["a cat", "banana"])
    assert [d.embedding for d in default.data] == [[5.0, 2.0, 2.0, 1.0], [6.0, 1.0, 3.0, 1.0]]
    floats = await client.embeddings.create(model="replay-embedder", input="a cat", encoding_format="float")
    assert floats.data[0].embedding == [5.0, 2.0, 2.0, 1.0]
    assert floats.model == "replay-embedder" and floats.usage.prompt_tokens == 2


async def test_openai_embeddings_errors_are_openai_error_objects(server):
    client = openai.AsyncOpenAI(base_url=f"{server[1]}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as wrong_size:
        await client.embeddings.create(model="replay-embedder", input="x", dimensions=8)
    assert wrong_size.value.body["param"] == "dimensions"
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.embeddings.create(model="no-such-embedder", input="x")
    assert "replay-embedder" in unknown.value.body["message"]


async def test_a_provider_without_embeddings_is_a_501_naming_it():
    class ChatOnly:
        async def chat_completion(self, request):  # pragma: no cover - never called
            raise AssertionError

    model = Model(model_id="emb", provider_id="chat-only", model_type="embedding")
    router = InferenceRouter([model], {"chat-only": RoutedProvider("chat-only", "tests", ChatOnly())})
    with pytest.raises(NotSupportedError) as error:
        await router.embeddings(EmbeddingsRequest(model="emb", contents=["x"]))
    assert error.value.provider == "chat-only" and "embeddings" in error.value.message


async def test_a_provider_without_batches_is_a_501_naming_it():
    """Batches (and the OpenAI routes' n, which use them) are optional for a provider."""
    from llama_stack.apis.inference import BatchChatCompletionRequest, BatchCompletionRequest

    class SinglesOnly:
        async def chat_completion(self, request):  # pragma: no cover - never called
            raise AssertionError

    router = InferenceRouter(
        [Model(model_id="m", provider_id="singles")], {"singles": RoutedProvider("singles", "tests", SinglesOnly())}
    )
    for call, request in [
        (router.batch_completion, BatchCompletionRequest(model="m", content_batch=["x"])),
        (
            router.batch_chat_completion,
            BatchChatCompletionRequest(model="m", batch_dialogs=[{"message": {"role": "user", "content": "x"}}]),
        ),
    ]:
        with pytest.raises(NotSupportedError) as error:
            await call(request)
        assert error.value.provider == "singles" and error.value.status == 501
