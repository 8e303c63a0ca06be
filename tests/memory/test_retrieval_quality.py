"""Retrieval quality: recall@3 of all-MiniLM-L6-v2 memory banks over the shipped corpus.

The corpus (corpus/facts.json) has short factual documents on many topics, several with a near neighbour
(two planets, two breads, two composers), and questions worded unlike their document, each naming the one
document that answers it. A question counts as recalled when a chunk of its document is among the three
chunks a query answers. The numbers are printed; a change that makes retrieval worse fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from memory_support import (
    SharedSentenceTransformersPlugin,
    document,
    faiss_provider,
    load_corpus,
    memory_distribution,
    pgvector_provider,
)
from support import ReplayPlugin

from llama_stack.client import LlamaStackClient
from llama_stack.plugins import discover_providers
from llama_stack.resolver import Stack

RECALL_FLOOR = 0.8
K = 3


@pytest.fixture(scope="module")
def memory_registry():
    return discover_providers(extra_plugins=[ReplayPlugin(), SharedSentenceTransformersPlugin()])


@pytest.mark.parametrize(
    ("backend", "config"),
    [
        ("faiss", {}),
        ("faiss", {"hybrid": True}),
        ("faiss", {"index": "hnsw"}),
        ("pgvector", {}),
        ("pgvector", {"hybrid": True}),
    ],
    ids=["faiss-flat", "faiss-hybrid", "faiss-hnsw", "pgvector-flat", "pgvector-hybrid"],
)
async def test_recall_at_3_over_the_corpus(
    backend: str, config: dict[str, Any], tmp_path, memory_registry, request, capsys
):
    corpus = load_corpus()
    provider = faiss_provider() if backend == "faiss" else pgvector_provider(request.getfixturevalue("postgres_uri"))
    path = memory_distribution(tmp_path, provider)
    client = await LlamaStackClient.library(Stack.from_distribution(path, registry=memory_registry))
    try:
        await client.memory_banks.register_memory_bank(bank_uuid="facts", bank_name="Facts", config=config)
        documents = [document(d["id"], d["text"], topic=d["topic"]) for d in corpus["documents"]]
        await client.memory_banks.insert_memory_documents(bank_uuid="facts", documents=documents)
        misses, firsts = [], 0
        for item in corpus["questions"]:
            answer = await client.memory_banks.query_memory_bank(bank_uuid="facts", query=item["question"], k=K)
            found = [chunk.document_uuid for chunk in answer.chunks]
            assert len(found) == K
            firsts += found[0] == item["document"]
            if item["document"] not in found:
                misses.append(f"{item['question']!r}: wanted {item['document']}, got {found}")
    finally:
        await client.aclose()
    questions = len(corpus["questions"])
    recall = (questions - len(misses)) / questions
    with capsys.disabled():
        print(
            f"\n{request.node.callspec.id}: recall@{K} {recall:.3f} ({questions - len(misses)}/{questions}), "
            f"recall@1 {firsts / questions:.3f} ({firsts}/{questions})"
        )
        for miss in misses:
            print(f"  missed {miss}")
    assert recall >= RECALL_FLOOR, "\n".join(misses)
