"""Memory banks whose embeddings and reranking come from remote::together (its fake): the embedding provider is
pluggable, and the vendor sees exactly the calls the bank needs."""

from __future__ import annotations

from typing import Any

import pytest
from fakes.together import API_KEY
from fakes.vendor_server import Fault
from memory_support import document
from remote.conftest import FAST_RETRIES

from llama_stack.apis.errors import ServiceUnavailableError

EMBEDDER = "togethercomputer/m2-bert-80M-8k-retrieval"
RERANKER = "Salesforce/Llama-Rank-V1"


def _providers(together_url: str) -> dict[str, list[dict[str, Any]]]:
    together = {"url": together_url, "api_key": API_KEY, **FAST_RETRIES}
    return {
        "inference": [{"provider_id": "together", "provider_type": "remote::together", "config": together}],
        "memory_banks": [
            {"provider_id": "faiss", "provider_type": "inline::faiss", "config": {"embedding_model": "m2-bert"}}
        ],
    }


MODELS = [
    {"model_id": "m2-bert", "provider_id": "together", "provider_model_id": EMBEDDER, "model_type": "embedding"},
    {"model_id": "llama-rank", "provider_id": "together", "provider_model_id": RERANKER, "model_type": "rerank"},
]

FACTS = {
    "llamas": "Llamas live in the Andes and carry loads.",
    "galaxy": "Our solar system orbits the Milky Way galaxy.",
    "paris": "Paris is the capital of France.",
}


async def test_a_bank_embeds_and_reranks_with_together_models(together, start_stack):
    client = await start_stack(_providers(together.url), MODELS)
    bank = await client.memory_banks.register_memory_bank(
        bank_uuid="facts", bank_name="Facts", config={"rerank_model": "llama-rank"}
    )
    assert bank.embedding_model == "m2-bert" and bank.embedding_dimension == 8  # the fake's vectors
    await client.memory_banks.insert_memory_documents(
        bank_uuid="facts", documents=[document(uuid, text) for uuid, text in FACTS.items()]
    )
    answer = await client.memory_banks.query_memory_bank(
        bank_uuid="facts", request={"query": "What is the capital of France?", "k": 2}
    )
    # The fake's reranker scores word overlap: the Paris fact shares the most words with the question.
    assert answer.chunks[0].document_uuid == "paris"
    assert len(answer.chunks) == 2

    embedded = [text for call in together.calls("POST", r"/v1/embeddings") for text in call.json["input"]]
    assert set(FACTS.values()) <= set(embedded) and "What is the capital of France?" in embedded
    assert all(call.json["model"] == EMBEDDER for call in together.calls("POST", r"/v1/embeddings"))
    (rerank,) = together.calls("POST", r"/v1/rerank")
    assert rerank.json["model"] == RERANKER and rerank.json["query"] == "What is the capital of France?"
    assert sorted(rerank.json["documents"]) == sorted(FACTS.values())


async def test_a_failing_embedding_vendor_is_a_503_naming_it_and_stores_nothing(together, start_stack):
    client = await start_stack(_providers(together.url), MODELS)
    await client.memory_banks.register_memory_bank(bank_uuid="facts", bank_name="Facts")
    together.fail("POST", "/embeddings", Fault("status", status=503), times=FAST_RETRIES["max_retries"] + 1)
    with pytest.raises(ServiceUnavailableError) as failure:
        await client.memory_banks.insert_memory_documents(
            bank_uuid="facts", documents=[document("paris", FACTS["paris"])]
        )
    assert failure.value.provider == "together" and "Together" in failure.value.message
    assert await client.memory_banks.get_memory_documents(bank_uuid="facts", document_uuids=["paris"]) == []
