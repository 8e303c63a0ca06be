"""Memory banks, the behaviour a user sees, on both stores: inline::faiss and remote::pgvector.

Each test starts its own stack (a fresh SQLite database, or fresh pgvector tables) from a distribution that
serves the real all-MiniLM-L6-v2 (loaded once per process, see memory_support.py), the replay provider's
reranker, and the store under test; it talks to it through the library client, or over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from memory_support import (
    MINILM,
    MINILM_DIMENSION,
    SharedSentenceTransformersPlugin,
    document,
    faiss_provider,
    memory_distribution,
    models,
    pgvector_provider,
    tiny_pdf,
)
from support import ReplayPlugin, serving, uvicorn_serving

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, ValidationError
from llama_stack.client import LlamaStackClient
from llama_stack.config import ConfigError
from llama_stack.plugins import discover_providers
from llama_stack.providers.utils.memory.config import MemoryBankDefaults
from llama_stack.resolver import Stack
from llama_stack.server import create_app

MAX_DOCUMENT_BYTES = 8 * 1024
DEFAULTS = MemoryBankDefaults()

FACTS = {
    "llamas": "Llamas are domesticated camelids from the Andes of South America. They carry loads and give wool.",
    "volcano": "A volcano erupts when molten rock called magma rises through the crust and bursts out as lava.",
    "bread": "Bread is baked from a dough of flour and water, leavened with yeast so that it rises in the oven.",
}


@pytest.fixture(scope="session")
def memory_registry():
    return discover_providers(extra_plugins=[ReplayPlugin(), SharedSentenceTransformersPlugin()])


@pytest.fixture(params=["faiss", "pgvector"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def memory_provider(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The store under test: faiss in this test's directory, or pgvector tables of this test's own prefix."""
    if backend == "faiss":
        return faiss_provider(max_document_bytes=MAX_DOCUMENT_BYTES)
    # Only pgvector tests start PostgreSQL.
    return pgvector_provider(request.getfixturevalue("postgres_uri"), max_document_bytes=MAX_DOCUMENT_BYTES)


async def start(path: Path, registry: Any) -> LlamaStackClient:
    return await LlamaStackClient.library(Stack.from_distribution(path, registry=registry))


@pytest.fixture
async def client(memory_provider, tmp_path, memory_registry):
    client = await start(memory_distribution(tmp_path, memory_provider), memory_registry)
    yield client
    await client.aclose()


async def register(client: LlamaStackClient, bank_uuid: str = "bank", **config: Any) -> Any:
    return await client.memory_banks.register_memory_bank(
        bank_uuid=bank_uuid, bank_name=f"{bank_uuid} name", config=config
    )


async def insert_facts(client: LlamaStackClient, bank_uuid: str = "bank") -> None:
    documents = [document(key, text, topic=key) for key, text in FACTS.items()]
    await client.memory_banks.insert_memory_documents(bank_uuid=bank_uuid, documents=documents)


async def query(client: LlamaStackClient, text: str, bank_uuid: str = "bank", **options: Any) -> list[Any]:
    return (await client.memory_banks.query_memory_bank(bank_uuid=bank_uuid, query=text, **options)).chunks


async def bank_named(client: LlamaStackClient, bank_uuid: str) -> Any:
    (bank,) = [b for b in await client.memory_banks.list_memory_banks() if b.uuid == bank_uuid]
    return bank


# ----------------------------------------------------------------------------------------------------
# Banks


async def test_register_answers_the_settings_in_force(client):
    bank = await register(client, chunk_size_tokens=64, hybrid=True)
    assert bank.uuid == "bank" and bank.name == "bank name"
    assert (bank.embedding_model, bank.embedding_dimension) == (MINILM, MINILM_DIMENSION)
    # Unset settings take the provider's defaults.
    settings = (bank.chunk_size_tokens, bank.overlap_tokens, bank.index, bank.hybrid, bank.rerank_model)
    assert settings == (64, DEFAULTS.overlap_tokens, DEFAULTS.index, True, DEFAULTS.rerank_model)
    assert (bank.document_count, bank.chunk_count) == (0, 0)
    assert await client.memory_banks.list_memory_banks() == [bank]


async def test_a_bank_records_the_model_id_when_registered_with_an_alias(client):
    bank = await register(client, embedding_model="minilm", index="hnsw")
    assert bank.embedding_model == MINILM and bank.index == "hnsw"


async def test_the_seed_create_makes_a_bank_with_defaults_holding_the_documents(client):
    documents = [document(key, text) for key, text in FACTS.items()]
    assert (
        await client.memory_banks.create_memory_bank(bank_uuid="seeded", bank_name="Facts", documents=documents) is None
    )
    (bank,) = await client.memory_banks.list_memory_banks()
    assert (bank.uuid, bank.name, bank.embedding_model, bank.chunk_size_tokens) == (
        "seeded",
        "Facts",
        MINILM,
        DEFAULTS.chunk_size_tokens,
    )
    assert (bank.document_count, bank.chunk_count) == (3, 3)
    assert (await query(client, "Where do llamas come from?", "seeded", k=1))[0].document_uuid == "llamas"


async def test_drop_removes_the_bank_and_an_unknown_bank_is_a_404_naming_the_banks(client):
    await register(client, "keep")
    await register(client, "gone")
    await insert_facts(client, "gone")
    assert await client.memory_banks.drop_memory_bank(bank_uuid="gone") == "gone"
    assert [b.uuid for b in await client.memory_banks.list_memory_banks()] == ["keep"]
    with pytest.raises(NotFoundError, match="Memory bank 'gone' not found \\(banks: keep\\)"):
        await client.memory_banks.drop_memory_bank(bank_uuid="gone")
    # The uuid is free again, and the new bank starts empty.
    await register(client, "gone")
    assert (await bank_named(client, "gone")).document_count == 0
    assert await query(client, "llamas", "gone") == []


async def test_a_taken_uuid_is_a_409_for_register_and_create(client):
    await register(client)
    with pytest.raises(ConflictError, match="'bank' already exists"):
        await register(client)
    with pytest.raises(ConflictError, match="'bank' already exists"):
        await client.memory_banks.create_memory_bank(bank_uuid="bank", bank_name="again", documents=[])


async def test_embedding_and_rerank_models_must_be_served_models_of_their_type(client):
    with pytest.raises(BadRequestError) as unknown:
        await register(client, embedding_model="text-embedding-3-large")
    assert unknown.value.param == "config.embedding_model"
    assert f"served embedding models: {MINILM}, replay-embedder" in unknown.value.message
    with pytest.raises(BadRequestError, match="model_type 'llm'; it must be of type 'embedding'") as wrong_type:
        await register(client, embedding_model="replay-model")
    assert wrong_type.value.param == "config.embedding_model"
    with pytest.raises(BadRequestError, match="served rerank models: replay-reranker") as rerank:
        await register(client, rerank_model=MINILM)
    assert rerank.value.param == "config.rerank_model"
    assert await client.memory_banks.list_memory_banks() == []


async def test_an_overlap_from_the_defaults_must_fit_a_smaller_chunk_size(client):
    with pytest.raises(
        BadRequestError, match=r"overlap_tokens: 32 must be smaller than chunk_size_tokens \(16\)"
    ) as error:
        await register(client, chunk_size_tokens=16)
    assert error.value.param == "config.overlap_tokens"
    with pytest.raises(ValidationError):  # both in the request: the schema refuses it
        await register(client, chunk_size_tokens=16, overlap_tokens=16)


# ----------------------------------------------------------------------------------------------------
# Documents


async def test_inserted_documents_come_back_as_sent_in_the_order_asked(client):
    await register(client)
    pdf = tiny_pdf("A one page PDF.")
    sent = [
        document("a", "Plain text about llamas.", author="ann", year=2024, tags=["x", "y"], nested={"k": None}),
        document("b", pdf, "application/pdf"),
    ]
    await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=sent)
    got = await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["b", "missing", "a"])
    assert [d.model_dump() for d in got] == [sent[1], sent[0]]
    assert base64.b64decode(got[0].content) == pdf
    assert await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["missing"]) == []


async def test_a_query_answers_the_relevant_chunk_with_its_document_and_metadata(client):
    await register(client)
    await insert_facts(client)
    chunks = await query(client, "What happens when a volcano erupts?", k=3)
    assert next(c.document_uuid for c in chunks) == "volcano"
    top = chunks[0]
    assert (top.text, top.chunk_index, top.metadata) == (FACTS["volcano"], 0, {"topic": "volcano"})
    assert 0.3 < top.score <= 1.0001  # cosine similarity of unit vectors
    assert [c.score for c in chunks] == sorted((c.score for c in chunks), reverse=True)
    assert len(await query(client, "anything", k=2)) == 2
    assert len(await query(client, "anything", k=50)) == 3  # no more than the bank holds


HTML = """<!doctype html><html><head><title>Shop</title><style>p { color: red }</style>
<script>var secret = "tracking pixel";</script></head>
<body><h1>Opening hours</h1><p>The <b>bakery</b> opens at seven in the morning.</p></body></html>"""

MIME_CASES = {
    "text/plain": (b"The bakery opens at seven in the morning.", "The bakery opens at seven in the morning."),
    "text/markdown": (b"# Opening hours\n\nThe **bakery** opens at seven in the morning.", "**bakery** opens at seven"),
    "text/html": (HTML.encode(), "Opening hours\n\nThe bakery opens at seven in the morning."),
    "application/pdf": (
        tiny_pdf("The bakery opens at seven", "in the morning."),
        "The bakery opens at seven\nin the morning.",
    ),
    "application/json": (b'{"shop":"bakery","opens":"seven in the morning"}', '"opens": "seven in the morning"'),
}


@pytest.mark.parametrize("mime_type", list(MIME_CASES))
async def test_each_mime_type_is_read_as_text_and_found(client, mime_type):
    content, expected_text = MIME_CASES[mime_type]
    await register(client)
    await insert_facts(client)
    await client.memory_banks.insert_memory_documents(
        bank_uuid="bank", documents=[document("shop", content, mime_type)]
    )
    (top,) = await query(client, "When does the bakery open?", k=1)
    assert top.document_uuid == "shop"
    assert expected_text in top.text
    assert "tracking" not in top.text and "color" not in top.text  # scripts and styles are not text
    (stored,) = await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["shop"])
    assert base64.b64decode(stored.content) == content and stored.mime_type == mime_type


async def test_a_long_document_is_chunked_with_overlap_and_the_right_chunk_is_found(client):
    await register(client, chunk_size_tokens=24, overlap_tokens=6)
    filler = [f"Paragraph {i} is about gardening, soil, compost and the watering of tomato plants." for i in range(8)]
    text = "\n\n".join([*filler[:6], "The lighthouse keeper lit the lamp every evening at dusk.", *filler[6:]])
    await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[document("long", text)])
    bank = await bank_named(client, "bank")
    assert bank.chunk_count >= 8 and bank.document_count == 1
    (top,) = await query(client, "Who lit the lamp of the lighthouse?", k=1)
    assert "lighthouse keeper lit the lamp" in top.text and top.chunk_index > 0
    chunks = await query(client, "tomato plants compost", k=100)
    assert sorted(c.chunk_index for c in chunks) == list(range(bank.chunk_count))


async def test_update_replaces_the_text_metadata_and_chunks(client):
    await register(client)
    await insert_facts(client)
    new = document(
        "llamas", "Penguins are flightless seabirds of the southern hemisphere.", "text/markdown", topic="birds"
    )
    await client.memory_banks.update_memory_documents(bank_uuid="bank", documents=[new])
    (got,) = await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["llamas"])
    assert got.model_dump() == new
    (top,) = await query(client, "flightless seabirds", k=1)
    assert (top.document_uuid, top.metadata) == ("llamas", {"topic": "birds"}) and top.text.startswith("Penguins")
    assert all("camelids" not in c.text for c in await query(client, "Andes camelids wool", k=10))
    assert (await bank_named(client, "bank")).document_count == 3


async def test_update_of_documents_the_bank_lacks_is_a_404_naming_them_and_changes_nothing(client):
    await register(client)
    await insert_facts(client)
    documents = [document("bread", "Rewritten."), document("cake", "New."), document("pie", "New.")]
    with pytest.raises(NotFoundError, match="no documents 'cake', 'pie' to update") as error:
        await client.memory_banks.update_memory_documents(bank_uuid="bank", documents=documents)
    assert error.value.param == "documents[1].uuid"
    (bread,) = await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["bread"])
    assert base64.b64decode(bread.content).decode() == FACTS["bread"]


async def test_delete_answers_the_uuids_that_existed_and_removes_their_vectors(client):
    await register(client)
    await insert_facts(client)
    deleted = await client.memory_banks.delete_memory_documents(
        bank_uuid="bank", document_uuids=["volcano", "nope", "llamas"]
    )
    assert deleted == ["volcano", "llamas"]
    assert [c.document_uuid for c in await query(client, "volcano lava magma", k=10)] == ["bread"]
    assert await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["volcano", "llamas"]) == []
    bank = await bank_named(client, "bank")
    assert (bank.document_count, bank.chunk_count) == (1, 1)
    assert await client.memory_banks.delete_memory_documents(bank_uuid="bank", document_uuids=["volcano"]) == []
    # A deleted uuid can be inserted again.
    await client.memory_banks.insert_memory_documents(
        bank_uuid="bank", documents=[document("volcano", FACTS["volcano"])]
    )
    assert (await query(client, "volcano lava magma", k=1))[0].document_uuid == "volcano"


async def test_inserting_a_uuid_the_bank_holds_is_a_409_and_stores_nothing_of_the_request(client):
    await register(client)
    await insert_facts(client)
    documents = [document("new", "Something new."), document("bread", "Bread again.")]
    with pytest.raises(ConflictError, match="already holds documents 'bread'; /memory_bank/update replaces") as error:
        await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=documents)
    assert error.value.param == "documents[1].uuid"
    assert await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=["new"]) == []


async def test_concurrent_inserts_of_one_uuid_store_it_once(client):
    await register(client)
    first, second = document("same", "The first version."), document("same", "The second version.")
    results = await asyncio.gather(
        client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[first]),
        client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[second]),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "NoneType"]
    bank = await bank_named(client, "bank")
    assert (bank.document_count, bank.chunk_count) == (1, 1)


# ----------------------------------------------------------------------------------------------------
# Bad input


async def test_bad_base64_is_a_400_naming_the_document_and_nothing_is_stored(client):
    await register(client)
    documents = [document("good", "Fine."), {"uuid": "bad", "content": "not base64!", "mime_type": "text/plain"}]
    with pytest.raises(BadRequestError, match="not valid base64") as error:
        await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=documents)
    assert error.value.param == "documents[1].content"
    assert (await bank_named(client, "bank")).document_count == 0


async def test_an_unsupported_mime_type_is_a_400_naming_the_supported_ones(client):
    await register(client)
    with pytest.raises(BadRequestError, match="unsupported media type 'image/png'; supported: text/plain") as error:
        await client.memory_banks.insert_memory_documents(
            bank_uuid="bank", documents=[document("img", b"\x89PNG", "image/png")]
        )
    assert error.value.param == "documents[0].mime_type"


async def test_duplicate_uuids_in_one_request_are_a_400(client):
    await register(client)
    documents = [document("a", "One."), document("b", "Two."), document("a", "Three.")]
    with pytest.raises(BadRequestError, match="'a' is also the uuid of documents\\[0\\]") as error:
        await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=documents)
    assert error.value.param == "documents[2].uuid"
    with pytest.raises(BadRequestError, match="each document of a request needs its own uuid"):
        await client.memory_banks.create_memory_bank(bank_uuid="other", bank_name="x", documents=documents)


async def test_an_oversize_document_is_refused_naming_the_limit(client):
    await register(client)
    big = document("big", b"word " * (MAX_DOCUMENT_BYTES // 5 + 1))
    with pytest.raises(BadRequestError, match=f"the largest accepted is {MAX_DOCUMENT_BYTES} bytes") as error:
        await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[big])
    assert error.value.param == "documents[0].content" and error.value.code == "document_too_large"
    at_limit = document("fits", b"word " * (MAX_DOCUMENT_BYTES // 5))
    await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[at_limit])


async def test_a_document_without_text_is_refused(client):
    await register(client)
    with pytest.raises(BadRequestError, match="holds no text to index") as error:
        await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[document("blank", " \n\t ")])
    assert error.value.param == "documents[0].content"


async def test_a_failed_create_leaves_no_bank_behind(client):
    with pytest.raises(BadRequestError):
        await client.memory_banks.create_memory_bank(
            bank_uuid="seeded",
            bank_name="x",
            documents=[document("a", "Fine."), document("b", b"\xff\xfe", "text/plain")],
        )
    assert await client.memory_banks.list_memory_banks() == []
    await client.memory_banks.create_memory_bank(bank_uuid="seeded", bank_name="x", documents=[document("a", "Fine.")])


@pytest.mark.parametrize(
    "call",
    [
        lambda mb: mb.insert_memory_documents(bank_uuid="nope", documents=[document("a", "x")]),
        lambda mb: mb.update_memory_documents(bank_uuid="nope", documents=[document("a", "x")]),
        lambda mb: mb.delete_memory_documents(bank_uuid="nope", document_uuids=["a"]),
        lambda mb: mb.get_memory_documents(bank_uuid="nope", document_uuids=["a"]),
        lambda mb: mb.query_memory_bank(bank_uuid="nope", query="x"),
        lambda mb: mb.drop_memory_bank(bank_uuid="nope"),
    ],
    ids=["insert", "update", "delete", "get", "query", "drop"],
)
async def test_every_route_answers_404_naming_the_banks_for_an_unknown_bank(client, call):
    await register(client, "b1")
    await register(client, "b2")
    with pytest.raises(NotFoundError, match=r"Memory bank 'nope' not found \(banks: b1, b2\)") as error:
        await call(client.memory_banks)
    assert error.value.param == "bank_uuid"


# ----------------------------------------------------------------------------------------------------
# Filters, hybrid retrieval, reranking

FILTERED = {
    "d1": {"author": "ann", "year": 2019, "lang": "en", "draft": False},
    "d2": {"author": "bob", "year": 2021, "lang": "fr", "draft": True},
    "d3": {"author": "ann", "year": 2023, "lang": "de"},
    "d4": {"author": "cy", "year": 2024, "draft": False},
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"author": "ann"}, {"d1", "d3"}),
        ({"year": {"$gte": 2021}}, {"d2", "d3", "d4"}),
        ({"year": {"$gt": 2019, "$lt": 2024}}, {"d2", "d3"}),
        ({"lang": {"$in": ["fr", "de"]}}, {"d2", "d3"}),
        ({"lang": {"$nin": ["en"]}}, {"d2", "d3", "d4"}),  # a document without the key satisfies $nin
        ({"draft": {"$ne": True}}, {"d1", "d3", "d4"}),
        ({"draft": False}, {"d1", "d4"}),
        ({"author": "ann", "lang": "de"}, {"d3"}),
        ({"$or": [{"author": "bob"}, {"year": {"$lte": 2019}}]}, {"d1", "d2"}),
        ({"$and": [{"author": "ann"}, {"$or": [{"year": 2019}, {"draft": True}]}]}, {"d1"}),
        ({"year": {"$gt": "2020"}}, set()),  # a string never compares with a number
        ({"author": "nobody"}, set()),
    ],
)
async def test_filters_select_chunks_by_document_metadata(client, filters, expected):
    await register(client)
    documents = [
        document(key, f"Meeting notes number {key[1]} about the budget.", **meta) for key, meta in FILTERED.items()
    ]
    await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=documents)
    chunks = await query(client, "meeting notes", k=10, filters=filters)
    assert {c.document_uuid for c in chunks} == expected
    assert all(c.metadata == FILTERED[c.document_uuid] for c in chunks)


async def test_a_malformed_filter_is_a_400_naming_its_path(client):
    await register(client)
    with pytest.raises(BadRequestError, match="unknown operator '\\$like'") as error:
        await query(client, "x", filters={"$or": [{"a": 1}, {"b": {"$like": "x"}}]})
    assert error.value.param == "filters.$or[1].b.$like"
    with pytest.raises(BadRequestError, match="leave filters out"):
        await query(client, "x", filters={})


async def test_a_query_asks_for_between_1_and_100_chunks(client):
    await register(client)
    for k in (0, 101):
        with pytest.raises(ValidationError) as error:
            await query(client, "x", k=k)
        assert error.value.param == "k"


async def test_hybrid_banks_merge_keyword_matches_by_rank(client):
    await register(client, hybrid=True)
    await insert_facts(client)
    rare = "Clause seven of the Quillfeather contract sets the penalties for late delivery."
    await client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[document("contract", rare)])
    chunks = await query(client, "quillfeather", k=4)
    # Only one chunk holds the word: first in the keyword ranking, it outranks every chunk found by vector alone.
    assert chunks[0].document_uuid == "contract"
    assert {c.document_uuid for c in chunks} == {"contract", *FACTS}
    # Reciprocal rank fusion scores: 1/(60 + rank) per ranking a chunk is in.
    assert 1 / 61 < chunks[0].score <= 2 / 61
    assert all(c.score <= 1 / 61 for c in chunks[1:])


async def test_a_rerank_model_reorders_the_candidates_and_scores_them(client):
    bank = await register(client, rerank_model="replay-reranker")
    assert bank.rerank_model == "replay-reranker"
    texts = {
        "llama": "llamas eat grass",
        "exact": "the capital of france",
        "partial": "france is a country with a capital",
    }
    await client.memory_banks.insert_memory_documents(
        bank_uuid="bank", documents=[document(k, t) for k, t in texts.items()]
    )
    chunks = await query(client, "capital of france", k=2)
    # The replay reranker scores the share of the query's words a text holds.
    assert [(c.document_uuid, round(c.score, 3)) for c in chunks] == [("exact", 1.0), ("partial", 0.667)]


# ----------------------------------------------------------------------------------------------------
# Embedding models and restarts


async def test_a_bank_refuses_vectors_of_another_dimension_and_a_model_no_longer_served(
    memory_provider, tmp_path, memory_registry
):
    memory_provider["config"]["embedding_model"] = "embedder"
    replay_embedder = [{"model_id": "embedder", "provider_id": "replay", "model_type": "embedding"}]
    client = await start(memory_distribution(tmp_path, memory_provider, model_list=replay_embedder), memory_registry)
    try:
        bank = await register(client)
        assert (bank.embedding_model, bank.embedding_dimension) == ("embedder", 4)
        await insert_facts(client)
    finally:
        await client.aclose()
    # The same model id, now served by MiniLM: 384 dimensions.
    minilm_embedder = [{**models()[0], "model_id": "embedder", "aliases": []}]
    client = await start(memory_distribution(tmp_path, memory_provider, model_list=minilm_embedder), memory_registry)
    try:
        for attempt in (
            client.memory_banks.insert_memory_documents(bank_uuid="bank", documents=[document("x", "New text.")]),
            query(client, "volcano"),
        ):
            with pytest.raises(
                ConflictError,
                match="holds 4-dimensional vectors from embedding model 'embedder', which now answers 384-dimensional",
            ) as error:
                await attempt
            assert error.value.code == "embedding_dimension_mismatch"
        # What needs no embedding still works.
        assert len(await client.memory_banks.get_memory_documents(bank_uuid="bank", document_uuids=list(FACTS))) == 3
    finally:
        await client.aclose()
    memory_provider["config"]["embedding_model"] = MINILM
    client = await start(memory_distribution(tmp_path, memory_provider), memory_registry)
    try:
        with pytest.raises(
            ConflictError, match="embedded with 'embedder', which this distribution no longer serves"
        ) as error:
            await query(client, "volcano")
        assert f"served embedding models: {MINILM}, replay-embedder" in error.value.message
        assert error.value.code == "embedding_model_not_served"
    finally:
        await client.aclose()


async def test_a_default_embedding_model_the_distribution_does_not_serve_fails_at_start(
    memory_provider, tmp_path, memory_registry
):
    memory_provider["config"]["embedding_model"] = "nomic-embed"
    with pytest.raises(ConfigError, match=f"config embedding_model: model 'nomic-embed' is not served.*{MINILM}"):
        await start(memory_distribution(tmp_path, memory_provider), memory_registry)


async def test_banks_and_documents_survive_a_restart_of_the_stack(memory_provider, tmp_path, memory_registry):
    path = memory_distribution(tmp_path, memory_provider)
    client = await start(path, memory_registry)
    try:
        await register(client, "flat")
        await register(client, "hnsw", index="hnsw", hybrid=True)
        for bank in ("flat", "hnsw"):
            await insert_facts(client, bank)
            await client.memory_banks.delete_memory_documents(bank_uuid=bank, document_uuids=["llamas"])
        before = await client.memory_banks.list_memory_banks()
    finally:
        await client.aclose()
    client = await start(path, memory_registry)
    try:
        assert await client.memory_banks.list_memory_banks() == before
        for bank in ("flat", "hnsw"):
            assert [c.document_uuid for c in await query(client, "Andes camelids", bank, k=5)] != []
            assert "llamas" not in {c.document_uuid for c in await query(client, "Andes camelids", bank, k=5)}
            assert (await query(client, "lava and magma", bank, k=1))[0].document_uuid == "volcano"
    finally:
        await client.aclose()


# ----------------------------------------------------------------------------------------------------
# Over HTTP


async def test_every_route_over_http(client):
    stack = client.transport.stack
    async with uvicorn_serving(create_app(stack)) as url, httpx.AsyncClient(base_url=url) as http:
        docs = [document(key, text, topic=key) for key, text in FACTS.items()]
        created = await http.post(
            "/memory_banks/create", params={"bank_uuid": "seeded", "bank_name": "Seeded"}, json=docs[:2]
        )
        assert created.status_code == 200, created.text
        registered = await http.post(
            "/memory_banks/register", json={"bank_uuid": "custom", "bank_name": "Custom", "config": {"hybrid": True}}
        )
        assert registered.status_code == 200 and registered.json()["embedding_dimension"] == MINILM_DIMENSION
        listed = await http.get("/memory_banks/get")
        assert listed.headers["content-type"].startswith("application/jsonl")
        banks = [json.loads(line) for line in listed.text.splitlines()]
        assert [(b["uuid"], b["document_count"]) for b in banks] == [("seeded", 2), ("custom", 0)]

        inserted = await http.post("/memory_bank/insert", params={"bank_uuid": "seeded"}, json=docs[2:])
        assert inserted.status_code == 200
        updated = await http.post(
            "/memory_bank/update", params={"bank_uuid": "seeded"}, json=[document("llamas", "Alpacas are smaller.")]
        )
        assert updated.status_code == 200
        got = await http.post("/memory_bank/get", params={"bank_uuid": "seeded"}, json=["llamas", "bread"])
        assert [json.loads(line)["uuid"] for line in got.text.splitlines()] == ["llamas", "bread"]
        answer = await http.post("/memory_bank/query", params={"bank_uuid": "seeded"}, json={"query": "magma", "k": 1})
        assert answer.status_code == 200
        (chunk,) = answer.json()["chunks"]
        assert chunk.keys() == {"text", "score", "document_uuid", "chunk_index", "metadata"}
        assert (chunk["document_uuid"], chunk["metadata"]) == ("volcano", {"topic": "volcano"})
        deleted = await http.post("/memory_bank/delete", params={"bank_uuid": "seeded"}, json=["bread", "nope"])
        assert [json.loads(line) for line in deleted.text.splitlines()] == ["bread"]
        dropped = await http.delete("/memory_banks/drop", params={"bank_uuid": "custom"})
        assert dropped.json() == "custom"

        unknown = await http.post("/memory_bank/query", params={"bank_uuid": "custom"}, json={"query": "x"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"] == "Memory bank 'custom' not found (banks: seeded)"
        bad = await http.post(
            "/memory_bank/insert", params={"bank_uuid": "seeded"}, json=[{**docs[0], "uuid": "z", "content": "%%%"}]
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents[0].content"
        conflict = await http.post("/memory_bank/insert", params={"bank_uuid": "seeded"}, json=[docs[1]])
        assert conflict.status_code == 409
        missing_field = await http.post("/memory_bank/query", params={"bank_uuid": "seeded"}, json={"k": 3})
        assert missing_field.status_code == 422 and missing_field.json()["error"]["param"] == "query"


# ----------------------------------------------------------------------------------------------------
# kill -9


@pytest.mark.slow
def test_an_acknowledged_write_survives_kill_9(memory_provider, tmp_path):
    """A real server, killed (SIGKILL) right after answering; restarted on the same storage, it has the writes."""
    inference = [
        {
            "provider_id": "sentence-transformers",
            "provider_type": "inline::sentence-transformers",
            "config": {"device": "cpu"},
        }
    ]
    path = memory_distribution(tmp_path, memory_provider, inference=inference, model_list=models()[:1])
    with serving(path) as server:
        http = httpx.Client(base_url=server.url, timeout=60)
        assert (
            http.post(
                "/memory_banks/register", json={"bank_uuid": "b", "bank_name": "B", "config": {"index": "hnsw"}}
            ).status_code
            == 200
        )
        docs = [document(key, text) for key, text in FACTS.items()]
        assert http.post("/memory_bank/insert", params={"bank_uuid": "b"}, json=docs).status_code == 200
        assert http.post("/memory_bank/delete", params={"bank_uuid": "b"}, json=["llamas"]).status_code == 200
        last = document("last", "The night train to Vienna leaves at ten past eleven.")
        assert http.post("/memory_bank/insert", params={"bank_uuid": "b"}, json=[last]).status_code == 200
        server.process.kill()
        server.process.wait()
    with serving(path) as server:
        http = httpx.Client(base_url=server.url, timeout=60)
        got = http.post("/memory_bank/get", params={"bank_uuid": "b"}, json=["llamas", "volcano", "last"])
        assert [json.loads(line)["uuid"] for line in got.text.splitlines()] == ["volcano", "last"]
        answer = http.post(
            "/memory_bank/query",
            params={"bank_uuid": "b"},
            json={"query": "When does the train to Vienna leave?", "k": 5},
        )
        chunks = answer.json()["chunks"]
        assert chunks[0]["document_uuid"] == "last"
        assert "llamas" not in {c["document_uuid"] for c in chunks}


@pytest.mark.slow
def test_the_local_distribution_serves_memory_banks_with_minilm(local_server):
    """`llama-stack run local` (the session's server): banks on inline::faiss, embedded by all-MiniLM-L6-v2."""
    http = httpx.Client(base_url=local_server, timeout=120)
    docs = [document(key, text) for key, text in FACTS.items()]
    created = http.post("/memory_banks/create", params={"bank_uuid": "local-facts", "bank_name": "Facts"}, json=docs)
    assert created.status_code == 200, created.text
    try:
        banks = {b["uuid"]: b for b in map(json.loads, http.get("/memory_banks/get").text.splitlines())}
        bank = banks["local-facts"]
        assert (bank["embedding_model"], bank["embedding_dimension"], bank["index"]) == (
            MINILM,
            MINILM_DIMENSION,
            "flat",
        )
        answer = http.post(
            "/memory_bank/query", params={"bank_uuid": "local-facts"}, json={"query": "How is bread made?", "k": 1}
        )
        assert answer.json()["chunks"][0]["document_uuid"] == "bread"
    finally:
        http.delete("/memory_banks/drop", params={"bank_uuid": "local-facts"})
