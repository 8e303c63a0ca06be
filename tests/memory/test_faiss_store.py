"""inline::faiss's store (SQLite + faiss) at the MemoryStore seam, with small random unit vectors (no model).

Covers every protocol method, replace/delete semantics for flat and HNSW banks, filters against the
reference ``matches()``, keyword search, restarts that load saved indexes and catch up incrementally,
damaged index files rebuilt from SQLite, a ``kill -9`` right after acknowledged writes, and HNSW recall.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, ServiceUnavailableError
from llama_stack.providers.inline.faiss.config import FaissConfig
from llama_stack.providers.inline.faiss.store import FaissStore
from llama_stack.providers.utils.memory.filters import matches, parse_filter
from llama_stack.providers.utils.memory.store import BankRecord, StoredChunk, StoredDocument

DIM = 16
KINDS = ["flat", "hnsw"]


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bank(uuid: str, index: str = "flat", dim: int = DIM, name: str | None = None) -> BankRecord:
    return BankRecord(
        uuid=uuid,
        name=name or f"bank {uuid}",
        embedding_model="test-embedder",
        embedding_dimension=dim,
        chunk_size_tokens=128,
        overlap_tokens=16,
        index=index,  # type: ignore[arg-type]
        hybrid=False,
        rerank_model=None,
    )


def document(
    uuid: str,
    vectors: np.ndarray,
    metadata: dict | None = None,
    texts: list[str] | None = None,
    content: bytes | None = None,
) -> StoredDocument:
    texts = texts or [f"{uuid} chunk {i}" for i in range(len(vectors))]
    return StoredDocument(
        uuid=uuid,
        content=content if content is not None else f"content of {uuid}".encode(),
        mime_type="text/plain",
        metadata=metadata or {},
        chunks=[
            StoredChunk(index=i, text=text, vector=vector.tolist())
            for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
        ],
    )


@pytest.fixture
async def open_store(tmp_path):
    """Opens FaissStores on this test's database (``open_store(**options)``); closes the ones left open."""
    opened: list[FaissStore] = []

    async def open_(**options) -> FaissStore:
        store = FaissStore(tmp_path / "memory.sqlite", **options)
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store):
    return await open_store()


def index_file_path(store: FaissStore, bank_uuid: str) -> Path:
    return store.index_dir / f"bank-{store._banks[bank_uuid].bank_id}.index"


# --------------------------------------------------------------------------------------------------
# Banks


async def test_banks_are_created_listed_counted_and_dropped(store):
    await store.create_bank(bank("a", "flat"))
    await store.create_bank(bank("b", "hnsw", dim=8, name="Bee"))
    rng = np.random.default_rng(0)
    await store.put_documents("a", [document("d1", unit_vectors(rng, 3)), document("d2", unit_vectors(rng, 2))])

    a = await store.get_bank("a")
    assert (a.name, a.embedding_model, a.embedding_dimension, a.index) == ("bank a", "test-embedder", DIM, "flat")
    assert (a.chunk_size_tokens, a.overlap_tokens, a.hybrid, a.rerank_model) == (128, 16, False, None)
    assert (a.document_count, a.chunk_count) == (2, 5)
    assert [(b.uuid, b.name, b.index, b.embedding_dimension, b.chunk_count) for b in await store.list_banks()] == [
        ("a", "bank a", "flat", DIM, 5),
        ("b", "Bee", "hnsw", 8, 0),
    ]
    assert await store.get_bank("nope") is None
    # Without counts (every request but a listing): the same settings, nothing counted.
    assert await store.get_bank("a", counts=False) == BankRecord(**{**vars(a), "document_count": 0, "chunk_count": 0})
    assert await store.get_bank("nope", counts=False) is None

    with pytest.raises(ConflictError) as conflict:
        await store.create_bank(bank("a"))
    assert conflict.value.param == "bank_uuid" and "'a'" in conflict.value.message

    assert await store.drop_bank("a") is True
    assert await store.drop_bank("a") is False
    assert await store.get_bank("a") is None
    assert [b.uuid for b in await store.list_banks()] == ["b"]
    with pytest.raises(NotFoundError) as missing:
        await store.get_documents("a", ["d1"])
    assert missing.value.param == "bank_uuid" and "'b'" in missing.value.message  # names what exists


async def test_a_dropped_bank_leaves_nothing_behind(store):
    rng = np.random.default_rng(1)
    await store.create_bank(bank("a"))
    await store.put_documents("a", [document("d1", unit_vectors(rng, 4), texts=["alpha"] * 4)])
    await store.close()  # saves the index file
    store = FaissStore(store.db_path)
    await store.start()
    path = index_file_path(store, "a")
    assert path.exists()

    await store.drop_bank("a")
    assert not path.exists()
    await store.create_bank(bank("a"))  # the same uuid again: a new, empty bank
    assert (await store.get_bank("a")).chunk_count == 0
    assert await store.vector_search("a", unit_vectors(rng, 1)[0].tolist(), 5, None) == []
    assert await store.keyword_search("a", "alpha", 5, None) == []
    assert await store.get_documents("a", ["d1"]) == []
    await store.close()


async def test_a_bank_needs_a_known_index_kind_and_a_positive_dimension(store):
    with pytest.raises(BadRequestError) as kind:
        await store.create_bank(bank("a", index="ivf"))
    assert kind.value.param == "index"
    with pytest.raises(BadRequestError) as dim:
        await store.create_bank(bank("a", dim=0))
    assert dim.value.param == "embedding_dimension"
    assert await store.list_banks() == []


# --------------------------------------------------------------------------------------------------
# Documents


async def test_documents_round_trip_in_input_order(store):
    rng = np.random.default_rng(2)
    await store.create_bank(bank("a"))
    pdf = bytes(range(256))  # any bytes survive, not only text
    await store.put_documents(
        "a",
        [
            document("d1", unit_vectors(rng, 2), {"author": "ann", "year": 2021, "tags": ["x"], "draft": False}),
            document("d2", unit_vectors(rng, 1), content=pdf),
        ],
    )
    found = await store.get_documents("a", ["d2", "missing", "d1", "d2"])
    assert [d.uuid for d in found] == ["d2", "d1"]
    assert found[0].content == pdf and found[0].mime_type == "text/plain" and found[0].chunks == []
    assert found[1].metadata == {"author": "ann", "year": 2021, "tags": ["x"], "draft": False}
    assert await store.document_uuids("a", ["d1", "d3", "d2"]) == {"d1", "d2"}
    assert await store.document_uuids("a", []) == set()


@pytest.mark.parametrize("kind", KINDS)
async def test_put_replaces_a_document_with_its_chunks_and_vectors(store, kind):
    rng = np.random.default_rng(3)
    await store.create_bank(bank("a", kind))
    old, new, other = unit_vectors(rng, 3), unit_vectors(rng, 2), unit_vectors(rng, 5)
    await store.put_documents("a", [document("d1", old, {"v": 1}, ["old"] * 3), document("d2", other)])
    await store.put_documents("a", [document("d1", new, {"v": 2}, ["new one", "new two"], content=b"v2")])

    [d1] = await store.get_documents("a", ["d1"])
    assert (d1.content, d1.metadata) == (b"v2", {"v": 2})
    assert ((await store.get_bank("a")).document_count, (await store.get_bank("a")).chunk_count) == (2, 7)
    for vector in old:  # the old chunks are gone from the index
        hits = await store.vector_search("a", vector.tolist(), 7, None)
        assert len(hits) == 7 and "old" not in {h.text for h in hits}
    hit = (await store.vector_search("a", new[1].tolist(), 1, None))[0]
    assert (hit.document_uuid, hit.chunk_index, hit.text, hit.metadata) == ("d1", 1, "new two", {"v": 2})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert await store.keyword_search("a", "old", 5, None) == []
    assert [h.text for h in await store.keyword_search("a", "two", 5, None)] == ["new two"]


async def test_a_uuid_given_twice_in_one_put_keeps_the_last(store):
    rng = np.random.default_rng(4)
    await store.create_bank(bank("a"))
    first, last = unit_vectors(rng, 2), unit_vectors(rng, 3)
    await store.put_documents("a", [document("d1", first, {"n": 1}), document("d1", last, {"n": 2})])
    assert [(d.uuid, d.metadata) for d in await store.get_documents("a", ["d1"])] == [("d1", {"n": 2})]
    assert (await store.get_bank("a")).chunk_count == 3
    assert len(await store.vector_search("a", first[0].tolist(), 10, None)) == 3


async def test_put_is_all_or_nothing(store):
    rng = np.random.default_rng(5)
    await store.create_bank(bank("a"))
    await store.put_documents("a", [document("keep", unit_vectors(rng, 1))])
    good = document("good", unit_vectors(rng, 2))

    short = document("short", unit_vectors(rng, 2, dim=DIM - 1))
    with pytest.raises(BadRequestError) as wrong_size:
        await store.put_documents("a", [good, short])
    assert wrong_size.value.param == "documents[1].chunks[0].vector"
    assert f"expected {DIM} numbers" in wrong_size.value.message

    twice = document("twice", unit_vectors(rng, 2))
    twice.chunks[1].index = 0  # found by SQLite after `good` was inserted: the transaction rolls back
    with pytest.raises(BadRequestError) as same_index:
        await store.put_documents("a", [good, twice])
    assert same_index.value.param == "documents[1].chunks"

    nan = document("nan", unit_vectors(rng, 1))
    nan.chunks[0].vector[3] = float("nan")
    with pytest.raises(BadRequestError, match="finite"):
        await store.put_documents("a", [nan])

    assert await store.document_uuids("a", ["keep", "good", "short", "twice", "nan"]) == {"keep"}
    assert (await store.get_bank("a")).chunk_count == 1
    assert len(await store.vector_search("a", good.chunks[0].vector, 10, None)) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_delete_removes_documents_and_their_vectors(store, kind):
    rng = np.random.default_rng(6)
    await store.create_bank(bank("a", kind))
    docs = [document(f"d{i}", unit_vectors(rng, 3), texts=[f"word{i} shared"] * 3) for i in range(20)]
    await store.put_documents("a", docs)

    assert await store.delete_documents("a", ["d3", "nope", "d7", "d3"]) == ["d3", "d7"]
    assert await store.delete_documents("a", ["d3"]) == []
    assert await store.document_uuids("a", ["d3", "d7", "d4"]) == {"d4"}
    assert ((await store.get_bank("a")).document_count, (await store.get_bank("a")).chunk_count) == (18, 54)
    for gone in (docs[3], docs[7]):
        for chunk in gone.chunks:  # the deleted chunk itself would be the best match
            hits = await store.vector_search("a", chunk.vector, 3, None)
            assert len(hits) == 3 and {"d3", "d7"}.isdisjoint(h.document_uuid for h in hits)
        assert len(await store.vector_search("a", gone.chunks[0].vector, 100, None)) == 54
    assert await store.keyword_search("a", "word3", 5, None) == []
    assert len(await store.keyword_search("a", "shared", 100, None)) == 54


# --------------------------------------------------------------------------------------------------
# Search


async def test_flat_search_is_exact_cosine(store):
    rng = np.random.default_rng(7)
    await store.create_bank(bank("a"))
    vectors = unit_vectors(rng, 200)
    await store.put_documents("a", [document(f"d{i}", vectors[i * 10 : (i + 1) * 10]) for i in range(20)])
    for query in unit_vectors(rng, 5):
        hits = await store.vector_search("a", query.tolist(), 7, None)
        expected = np.argsort(-(vectors @ query))[:7]
        assert [(h.document_uuid, h.chunk_index) for h in hits] == [(f"d{i // 10}", i % 10) for i in expected]
        assert [h.score for h in hits] == pytest.approx((vectors @ query)[expected].tolist(), abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
async def test_search_answers_at_most_what_the_bank_holds(store, kind):
    rng = np.random.default_rng(8)
    await store.create_bank(bank("a", kind))
    assert await store.vector_search("a", unit_vectors(rng, 1)[0].tolist(), 5, None) == []
    await store.put_documents("a", [document("d1", unit_vectors(rng, 3))])
    hits = await store.vector_search("a", unit_vectors(rng, 1)[0].tolist(), 10, None)
    assert sorted(h.chunk_index for h in hits) == [0, 1, 2]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_bad_search_inputs_are_400s(store):
    await store.create_bank(bank("a"))
    with pytest.raises(BadRequestError) as dimension:
        await store.vector_search("a", [1.0, 0.0], 3, None)
    assert dimension.value.param == "vector" and f"expected {DIM} numbers" in dimension.value.message
    with pytest.raises(BadRequestError) as k:
        await store.keyword_search("a", "x", 0, None)
    assert k.value.param == "k"
    with pytest.raises(NotFoundError, match="'nope' not found"):
        await store.vector_search("nope", [1.0] * DIM, 3, None)


def random_metadata(rng: random.Random) -> dict:
    metadata: dict = {}
    if rng.random() < 0.8:
        metadata["author"] = rng.choice(["ann", "bob", "cy"])
    if rng.random() < 0.8:
        metadata["year"] = rng.choice([2019, 2020, 2021, 2022, 2023.5, "2021"])
    if rng.random() < 0.6:
        metadata["draft"] = rng.choice([True, False, 0, 1])
    if rng.random() < 0.5:
        metadata["tag"] = rng.choice(["a", "b", "c", None])
    return metadata


FILTERS = [
    {"author": "ann"},
    {"author": {"$ne": "ann"}},
    {"year": {"$gte": 2020, "$lt": 2022}},
    {"year": {"$gt": "2020"}},
    {"year": 2021},
    {"draft": True},
    {"draft": 1},
    {"draft": {"$nin": [False]}},
    {"tag": {"$in": ["a", None]}},
    {"tag": None},
    {"$or": [{"author": "bob"}, {"year": {"$lte": 2019}}]},
    {"$and": [{"author": {"$in": ["ann", "cy"]}}, {"$or": [{"tag": "b"}, {"draft": False}]}]},
    {"author": "nobody"},
    {"missing": {"$ne": 3}},
]


@pytest.mark.parametrize(
    ("kind", "options"),
    [("flat", {}), ("hnsw", {}), ("flat", {"exact_search_limit": 0}), ("hnsw", {"exact_search_limit": 0})],
    ids=["flat", "hnsw", "flat-selector", "hnsw-selector"],
)
async def test_filters_select_what_matches_says(open_store, kind, options):
    """Every filter selects exactly the documents the reference ``matches()`` accepts, in both searches."""
    store = await open_store(**options)
    rng, pick = np.random.default_rng(9), random.Random(9)
    await store.create_bank(bank("a", kind))
    docs = [document(f"d{i}", unit_vectors(rng, 2), random_metadata(pick), ["common words"] * 2) for i in range(80)]
    await store.put_documents("a", docs)
    query = unit_vectors(rng, 1)[0].tolist()
    for raw in FILTERS:
        filter_ = parse_filter(raw)
        expected = {d.uuid for d in docs if matches(filter_, d.metadata)}
        by_vector = await store.vector_search("a", query, 200, filter_)
        assert {h.document_uuid for h in by_vector} == expected, raw
        assert len(by_vector) == 2 * len(expected)
        assert all(matches(filter_, h.metadata) for h in by_vector)
        by_words = await store.keyword_search("a", "common", 200, filter_)
        assert {h.document_uuid for h in by_words} == expected, raw


async def test_filtered_vector_search_is_the_best_k_of_the_matching(store):
    rng, pick = np.random.default_rng(10), random.Random(10)
    await store.create_bank(bank("a"))
    docs = [document(f"d{i}", unit_vectors(rng, 4), random_metadata(pick)) for i in range(50)]
    await store.put_documents("a", docs)
    filter_ = parse_filter({"author": "bob"})
    chunks = [(d.uuid, c.index, np.array(c.vector)) for d in docs if matches(filter_, d.metadata) for c in d.chunks]
    query = unit_vectors(rng, 1)[0]
    best = sorted(chunks, key=lambda c: -float(c[2] @ query))[:5]
    hits = await store.vector_search("a", query.tolist(), 5, filter_)
    assert [(h.document_uuid, h.chunk_index) for h in hits] == [(uuid, index) for uuid, index, _ in best]


async def test_filters_follow_replaced_and_deleted_documents(store):
    rng = np.random.default_rng(11)
    await store.create_bank(bank("a"))
    await store.put_documents(
        "a", [document("d1", unit_vectors(rng, 1), {"k": 1}), document("d2", unit_vectors(rng, 1), {"k": 1})]
    )
    query = unit_vectors(rng, 1)[0].tolist()
    one = parse_filter({"k": 1})
    assert {h.document_uuid for h in await store.vector_search("a", query, 5, one)} == {"d1", "d2"}
    await store.put_documents("a", [document("d1", unit_vectors(rng, 1), {"k": 2})])
    await store.delete_documents("a", ["d2"])
    assert await store.vector_search("a", query, 5, one) == []
    assert [h.document_uuid for h in await store.vector_search("a", query, 5, parse_filter({"k": 2}))] == ["d1"]


async def test_keyword_search_ranks_by_bm25(store):
    rng = np.random.default_rng(12)
    await store.create_bank(bank("a"))
    await store.create_bank(bank("b"))
    texts = {
        "cats": "Cats purr and sleep; a cat naps all day.",
        "dogs": "Dogs bark at the mail carrier and run in the park.",
        "both": "The dog chased the cat across the park.",
        "zebra": "Zebras graze on the savanna.",
    }
    await store.put_documents(
        "a", [document(uuid, unit_vectors(rng, 1), {"uuid": uuid}, [text]) for uuid, text in texts.items()]
    )
    await store.put_documents("b", [document("other", unit_vectors(rng, 1), texts=["cat cat cat"])])

    hits = await store.keyword_search("a", "cat park", 10, None)
    assert next(h.document_uuid for h in hits) == "both"  # the only chunk with both words
    assert {h.document_uuid for h in hits} == {"cats", "dogs", "both"}  # stemmed: "cats" matches "cat"
    assert all(h.score > 0 for h in hits) and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert (hits[0].text, hits[0].chunk_index, hits[0].metadata) == (texts["both"], 0, {"uuid": "both"})
    assert [h.document_uuid for h in await store.keyword_search("a", "running", 10, None)] == ["dogs"]
    assert [h.document_uuid for h in await store.keyword_search("a", "ZEBRAS!", 10, None)] == ["zebra"]
    assert [h.document_uuid for h in await store.keyword_search("a", "cat park", 1, None)] == ["both"]
    assert await store.keyword_search("a", "unicorn", 10, None) == []
    assert await store.keyword_search("a", "?! ...", 10, None) == []
    # FTS5 query syntax in the user's words is taken literally, not parsed.
    assert {h.document_uuid for h in await store.keyword_search("a", 'cat* AND "park NEAR(x', 10, None)} == {
        "cats",
        "dogs",
        "both",
    }
    filtered = await store.keyword_search("a", "cat park", 10, parse_filter({"uuid": {"$ne": "both"}}))
    assert {h.document_uuid for h in filtered} == {"cats", "dogs"}
    assert [h.document_uuid for h in await store.keyword_search("b", "cat", 10, None)] == ["other"]


# --------------------------------------------------------------------------------------------------
# HNSW specifics


async def test_hnsw_rebuilds_once_deletions_pile_up(open_store):
    store = await open_store(hnsw_rebuild_share=0.2)
    rng = np.random.default_rng(13)
    await store.create_bank(bank("a", "hnsw"))
    docs = [document(f"d{i}", unit_vectors(rng, 5)) for i in range(40)]
    await store.put_documents("a", docs)
    state = store._banks["a"]  # the index itself: tombstones are invisible from outside, by design

    await store.delete_documents("a", [f"d{i}" for i in range(6)])  # 30 of 200: under a fifth
    assert len(state.tombstones) == 30 and state.index.ntotal == 200
    for chunk in docs[0].chunks:
        hits = await store.vector_search("a", chunk.vector, 3, None)
        assert len(hits) == 3 and all(h.document_uuid != "d0" for h in hits)
    assert len(await store.vector_search("a", docs[0].chunks[0].vector, 200, None)) == 170

    await store.delete_documents("a", [f"d{i}" for i in range(6, 10)])  # 50 of 200: rebuilt
    assert not state.tombstones and state.index.ntotal == 150
    assert index_file_path(store, "a").exists()  # saved after the rebuild
    hits = await store.vector_search("a", docs[20].chunks[2].vector, 1, None)
    assert (hits[0].document_uuid, hits[0].chunk_index) == ("d20", 2)


@pytest.mark.slow  # building the 5k-vector graph takes 1-4 s
async def test_hnsw_recall_against_exact_search(open_store):
    """Default HNSW settings on 5k random 384-d unit vectors (a hard case: no clusters) find > 90% of the
    exact top 10."""
    store = await open_store(**{k: v for k, v in FaissConfig().model_dump().items() if k.startswith("hnsw_")})
    rng = np.random.default_rng(14)
    vectors = unit_vectors(rng, 5000, dim=384)
    for kind in KINDS:
        await store.create_bank(bank(kind, kind, dim=384))
        await store.put_documents(kind, [document(f"d{i}", vectors[i * 100 : (i + 1) * 100]) for i in range(50)])
    found = exact = 0
    for query in unit_vectors(rng, 50, dim=384).tolist():
        truth = {(h.document_uuid, h.chunk_index) for h in await store.vector_search("flat", query, 10, None)}
        approx = {(h.document_uuid, h.chunk_index) for h in await store.vector_search("hnsw", query, 10, None)}
        found, exact = found + len(truth & approx), exact + len(truth)
    assert found / exact > 0.9


# --------------------------------------------------------------------------------------------------
# Durability and restarts


async def search_all(store: FaissStore, bank_uuid: str, queries: np.ndarray) -> list[list[tuple[str, int]]]:
    return [
        [(h.document_uuid, h.chunk_index) for h in await store.vector_search(bank_uuid, q.tolist(), 5, None)]
        for q in queries
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_restart_loads_the_saved_index(tmp_path, kind):
    rng = np.random.default_rng(15)
    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    await store.create_bank(bank("a", kind))
    await store.put_documents("a", [document(f"d{i}", unit_vectors(rng, 5), {"i": i}) for i in range(30)])
    await store.delete_documents("a", ["d4"])
    queries = unit_vectors(rng, 10)
    before = await search_all(store, "a", queries)
    await store.close()

    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    try:
        load = store.index_loads["a"]
        assert (load.source, load.vectors_from_file, load.vectors_added, load.vectors_removed) == ("file", 145, 0, 0)
        assert await search_all(store, "a", queries) == before
        assert (await store.get_bank("a")).chunk_count == 145
        assert [d.metadata for d in await store.get_documents("a", ["d7"])] == [{"i": 7}]
    finally:
        await store.close()


async def test_periodic_saves_keep_the_index_file_fresh(open_store):
    store = await open_store(index_save_changes=10)
    rng = np.random.default_rng(16)
    await store.create_bank(bank("a"))
    await store.put_documents("a", [document("d1", unit_vectors(rng, 4))])
    assert not index_file_path(store, "a").exists()  # 4 changes: not yet
    await store.put_documents("a", [document("d2", unit_vectors(rng, 8))])
    assert index_file_path(store, "a").exists()


async def test_a_failed_index_save_does_not_fail_the_committed_write(open_store, monkeypatch):
    store = await open_store(index_save_changes=1)
    rng = np.random.default_rng(21)
    await store.create_bank(bank("a"))

    def disk_full(index):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("faiss.serialize_index", disk_full)
    await store.put_documents("a", [document("d1", unit_vectors(rng, 2))])
    assert not index_file_path(store, "a").exists()
    assert await store.document_uuids("a", ["d1"]) == {"d1"}
    assert len(await store.vector_search("a", unit_vectors(rng, 1)[0].tolist(), 5, None)) == 2


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(corrupt, "corrupt"), (truncate, "corrupt"), (delete, "no index file")],
    ids=["corrupt", "truncated", "missing"],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_damaged_index_file_is_rebuilt_from_sqlite(tmp_path, kind, damage, reason):
    rng = np.random.default_rng(17)
    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    await store.create_bank(bank("a", kind))
    await store.put_documents("a", [document(f"d{i}", unit_vectors(rng, 4)) for i in range(10)])
    queries = unit_vectors(rng, 5)
    before = await search_all(store, "a", queries)
    path = index_file_path(store, "a")
    await store.close()
    damage(path)

    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    try:
        load = store.index_loads["a"]
        assert load.source == "rebuilt" and reason in load.reason and load.vectors_added == 40
        assert await search_all(store, "a", queries) == before
    finally:
        await store.close()
    assert path.exists()  # saved again at close


async def test_an_index_file_older_than_the_last_save_is_not_trusted(tmp_path):
    """Saving forgets the deletions the file reflects; an older file cannot know them, so it is rebuilt."""
    rng = np.random.default_rng(18)
    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    await store.create_bank(bank("a"))
    await store.put_documents("a", [document(f"d{i}", unit_vectors(rng, 2)) for i in range(10)])
    path = index_file_path(store, "a")
    await store.close()
    old = path.read_bytes()

    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    await store.delete_documents("a", ["d0", "d1"])
    await store.close()
    path.write_bytes(old)

    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    try:
        load = store.index_loads["a"]
        assert load.source == "rebuilt" and "generation" in load.reason
        hits = await store.vector_search("a", unit_vectors(rng, 1)[0].tolist(), 20, None)
        assert len(hits) == 16 and {"d0", "d1"}.isdisjoint(h.document_uuid for h in hits)
    finally:
        await store.close()


async def test_leftover_files_of_dropped_banks_and_unfinished_saves_are_removed_at_start(tmp_path):
    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    await store.create_bank(bank("a"))
    await store.put_documents("a", [document("d1", unit_vectors(np.random.default_rng(22), 2))])
    kept = index_file_path(store, "a")
    await store.close()
    dropped, unfinished = store.index_dir / "bank-99.index", kept.with_name(kept.name + ".tmp")
    dropped.write_bytes(b"an index of a bank dropped just before a crash")
    unfinished.write_bytes(b"half a save")

    store = FaissStore(tmp_path / "memory.sqlite")
    await store.start()
    try:
        assert kept.exists() and not dropped.exists() and not unfinished.exists()
        assert store.index_loads["a"].source == "file"
    finally:
        await store.close()


async def test_a_second_store_on_the_same_database_is_refused(store):
    other = FaissStore(store.db_path)
    with pytest.raises(ServiceUnavailableError, match="open in another store"):
        await other.start()
    await store.create_bank(bank("a"))  # the first one is unaffected
    assert [b.uuid for b in await store.list_banks()] == ["a"]


async def test_concurrent_writes_are_all_kept(store):
    import asyncio

    rng = np.random.default_rng(19)
    await store.create_bank(bank("a"))
    await asyncio.gather(*(store.put_documents("a", [document(f"d{i}", unit_vectors(rng, 3))]) for i in range(30)))
    assert (await store.get_bank("a")).chunk_count == 90


async def test_calls_after_close_are_refused(store):
    await store.close()
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await store.list_banks()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from llama_stack.providers.inline.faiss.store import FaissStore
    from llama_stack.providers.utils.memory.store import StoredChunk, StoredDocument

    def vectors(seed, n, dim):
        v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    async def main(db, dim):
        store = FaissStore(db)
        await store.start()
        print("deleted", await store.delete_documents("a", ["base"]), flush=True)
        for i in range(100_000):  # until killed
            chunks = [StoredChunk(j, f"w{i} chunk {j}", v.tolist()) for j, v in enumerate(vectors(i, 3, dim))]
            await store.put_documents("a", [StoredDocument(f"w{i}", b"x" * 1000, "text/plain", {"i": i}, chunks)])
            print("acked", f"w{i}", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def writer_vectors(seed: int, n: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def test_acknowledged_writes_survive_kill_9(tmp_path):
    """A writer process is SIGKILLed right after acknowledging documents; all of them are there afterwards,
    and the saved index is caught up (not rebuilt) with the writes and the deletion since it was saved."""
    rng = np.random.default_rng(20)
    db = tmp_path / "memory.sqlite"
    store = FaissStore(db)
    await store.start()
    await store.create_bank(bank("a"))
    await store.put_documents("a", [document("base", unit_vectors(rng, 4), texts=["base text"] * 4)])
    await store.close()  # the index file now holds the 4 base vectors

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(DIM)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    acked: list[str] = []
    try:
        first = writer.stdout.readline()
        assert first.startswith("deleted ['base']"), first + writer.stderr.read()
        while len(acked) < 25:
            line = writer.stdout.readline()
            assert line.startswith("acked "), line + writer.stderr.read()
            acked.append(line.split()[1])
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    store = FaissStore(db)
    await store.start()
    try:
        assert await store.document_uuids("a", [*acked, "base"]) == set(acked)
        bank_now = await store.get_bank("a")
        assert bank_now.chunk_count == 3 * bank_now.document_count  # a write in flight is all there or absent
        load = store.index_loads["a"]
        assert (load.source, load.vectors_from_file, load.vectors_removed) == ("file", 4, 4)
        assert load.vectors_added == bank_now.chunk_count
        for uuid in acked:
            i = int(uuid[1:])
            for j, vector in enumerate(writer_vectors(i, 3)):
                hit = (await store.vector_search("a", vector.tolist(), 1, None))[0]
                assert (hit.document_uuid, hit.chunk_index, hit.metadata) == (uuid, j, {"i": i})
        for vector in unit_vectors(np.random.default_rng(20), 4):  # the base document's, deleted by the writer
            hits = await store.vector_search("a", vector.tolist(), 2, None)
            assert len(hits) == 2 and all(h.document_uuid != "base" for h in hits)
        assert await store.keyword_search("a", "base", 5, None) == []
    finally:
        await store.close()


def test_the_store_takes_its_settings_from_the_config(tmp_path):
    config = FaissConfig(hnsw_m=16, hnsw_ef_search=50, index_save_changes=7)
    store = FaissStore.from_config(config, tmp_path)
    assert store.db_path == tmp_path / "memory.sqlite"
    assert store.index_dir == tmp_path / "memory.sqlite.faiss"
    assert (store.hnsw.m, store.hnsw.ef_search, store.index_save_changes) == (16, 50, 7)
    assert FaissStore.from_config(FaissConfig(db_path=tmp_path / "x.db"), tmp_path).db_path == tmp_path / "x.db"
