"""remote::pgvector's store against a real PostgreSQL with pgvector (pgserver, started once per session).

Each test gets its own table prefix, so tests share the server without seeing each other's banks.
Vectors are random unit vectors (no embedding model needed): what is under test is storage and search.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from support import free_port

from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.providers.remote.pgvector.config import PGVectorConfig
from llama_stack.providers.remote.pgvector.store import PGVectorStore
from llama_stack.providers.utils.memory.filters import matches, parse_filter
from llama_stack.providers.utils.memory.store import BankRecord, StoredChunk, StoredDocument

DIM = 16


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bank(uuid_: str = "bank", dim: int = DIM, index: str = "flat", **kwargs: Any) -> BankRecord:
    fields: dict[str, Any] = {
        "name": f"bank {uuid_}",
        "embedding_model": "all-minilm-l6-v2",
        "embedding_dimension": dim,
        "chunk_size_tokens": 256,
        "overlap_tokens": 32,
        "index": index,
        "hybrid": False,
        "rerank_model": None,
    }
    fields.update(kwargs)
    return BankRecord(uuid=uuid_, **fields)


def document(
    uuid_: str, texts: list[str], vectors: np.ndarray, metadata: dict[str, Any] | None = None
) -> StoredDocument:
    chunks = [
        StoredChunk(index=i, text=t, vector=v.tolist()) for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
    ]
    return StoredDocument(
        uuid=uuid_,
        content=" ".join(texts).encode(),
        mime_type="text/plain",
        metadata=metadata or {},
        chunks=chunks,
    )


def config(postgres_uri: str, prefix: str, **kwargs: Any) -> PGVectorConfig:
    return PGVectorConfig(dsn=postgres_uri, table_prefix=prefix, **kwargs)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
async def make_store(postgres_uri: str, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """Start a store on this test's tables (or on other settings); every one is closed at the end."""
    stores: list[PGVectorStore] = []

    async def make(**kwargs: Any) -> PGVectorStore:
        kwargs.setdefault("dsn", postgres_uri)
        kwargs.setdefault("table_prefix", prefix)
        store = PGVectorStore(PGVectorConfig(**kwargs), provider_id="pg")
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., Any]) -> PGVectorStore:
    return await make_store()


@pytest.fixture
async def db(postgres_uri: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection of the test's own, to look at the tables the way another client would."""
    async with await psycopg.AsyncConnection.connect(postgres_uri, autocommit=True) as conn:
        yield conn


async def scalar(db: psycopg.AsyncConnection[Any], query: sql.Composable | str, *params: Any) -> Any:
    return (await (await db.execute(query, params or None)).fetchone())[0]


# -- banks ---------------------------------------------------------------------------------------------


async def test_banks_are_created_listed_and_refused_twice(store: PGVectorStore):
    first = bank("b1", index="hnsw", hybrid=True, rerank_model="rr")
    await store.create_bank(first)
    await store.create_bank(bank("b2", dim=8, chunk_size_tokens=64, overlap_tokens=0))

    assert await store.get_bank("b1") == first
    assert [b.uuid for b in await store.list_banks()] == ["b1", "b2"]
    b2 = await store.get_bank("b2")
    assert (b2.embedding_dimension, b2.chunk_size_tokens, b2.overlap_tokens, b2.index) == (8, 64, 0, "flat")
    assert await store.get_bank("nope") is None

    with pytest.raises(ConflictError, match="'b1' already exists"):
        await store.create_bank(bank("b1", dim=4))
    assert (await store.get_bank("b1")).embedding_dimension == DIM


async def test_hnsw_refuses_dimensions_pgvector_cannot_index(store: PGVectorStore):
    with pytest.raises(NotSupportedError, match=r"up to 2000 dimensions.*Use index 'flat'"):
        await store.create_bank(bank("big", dim=3072, index="hnsw"))
    await store.create_bank(bank("big", dim=3072, index="flat"))
    vectors = unit_vectors(2, dim=3072)
    await store.put_documents("big", [document("d", ["x", "y"], vectors)])
    hits = await store.vector_search("big", vectors[1].tolist(), 1, None)
    assert (hits[0].chunk_index, round(hits[0].score, 4)) == (1, 1.0)


# -- documents -----------------------------------------------------------------------------------------


async def test_documents_are_stored_counted_and_committed_on_return(
    store: PGVectorStore, db: psycopg.AsyncConnection[Any], prefix: str
):
    await store.create_bank(bank())
    vectors = unit_vectors(3)
    docs = [
        document("d1", ["alpha", "beta"], vectors[:2], {"author": "ann", "year": 2021, "tags": ["x"]}),
        document("d2", ["gamma"], vectors[2:]),
    ]
    docs[1].mime_type, docs[1].content = "application/pdf", b"%PDF-1.4 \x00\xff binary"
    await store.put_documents("bank", docs)

    # Another client sees it at once: the write was committed before put_documents returned.
    count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(prefix + "documents"))
    assert await scalar(db, count) == 2

    got = await store.get_documents("bank", ["d2", "missing", "d1"])
    assert [(d.uuid, d.content, d.mime_type, d.metadata, d.chunks) for d in got] == [
        ("d2", b"%PDF-1.4 \x00\xff binary", "application/pdf", {}, []),
        ("d1", b"alpha beta", "text/plain", {"author": "ann", "year": 2021, "tags": ["x"]}, []),
    ]
    assert await store.document_uuids("bank", ["d1", "x", "d2"]) == {"d1", "d2"}
    record = await store.get_bank("bank")
    assert (record.document_count, record.chunk_count) == (2, 3)
    assert [(b.document_count, b.chunk_count) for b in await store.list_banks()] == [(2, 3)]
    # Without counts (every request but a listing): the same settings, nothing counted.
    assert await store.get_bank("bank", counts=False) == bank()
    assert await store.get_bank("nope", counts=False) is None


async def test_put_replaces_a_document_with_its_chunks_and_vectors(store: PGVectorStore):
    await store.create_bank(bank())
    vectors = unit_vectors(4)
    await store.put_documents("bank", [document("d", ["old 0", "old 1", "old 2"], vectors[:3], {"v": 1})])
    await store.put_documents("bank", [document("d", ["new 0"], vectors[3:], {"v": 2})])

    record = await store.get_bank("bank")
    assert (record.document_count, record.chunk_count) == (1, 1)
    assert (await store.get_documents("bank", ["d"]))[0].metadata == {"v": 2}
    hits = await store.vector_search("bank", vectors[0].tolist(), 10, None)
    assert [(h.text, h.metadata) for h in hits] == [("new 0", {"v": 2})]
    assert await store.keyword_search("bank", "old", 10, None) == []


async def test_delete_removes_documents_chunks_and_vectors(
    store: PGVectorStore, db: psycopg.AsyncConnection[Any], prefix: str
):
    await store.create_bank(bank())
    vectors = unit_vectors(3)
    await store.put_documents(
        "bank", [document("a", ["apple pie"], vectors[:1]), document("b", ["banana split", "bread"], vectors[1:])]
    )
    assert await store.delete_documents("bank", ["zzz", "b", "a", "b"]) == ["b", "a"]
    assert await store.delete_documents("bank", ["a"]) == []

    assert await store.vector_search("bank", vectors[1].tolist(), 5, None) == []
    assert await store.keyword_search("bank", "banana", 5, None) == []
    assert await store.get_documents("bank", ["a", "b"]) == []
    banks = sql.Identifier(prefix + "banks")
    bank_id = await scalar(db, sql.SQL("SELECT id FROM {} WHERE uuid = 'bank'").format(banks))
    chunks = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"{prefix}chunks_{bank_id}"))
    assert await scalar(db, chunks) == 0
    record = await store.get_bank("bank")
    assert (record.document_count, record.chunk_count) == (0, 0)


async def test_bad_writes_are_refused_whole(store: PGVectorStore):
    await store.create_bank(bank())
    good = document("good", ["fine"], unit_vectors(1))
    with pytest.raises(BadRequestError, match="2 dimensions; bank 'bank' stores 16"):
        await store.put_documents("bank", [good, document("short", ["x"], unit_vectors(1, dim=2))])
    with pytest.raises(BadRequestError, match="'twice' appears twice"):
        await store.put_documents("bank", [document("twice", ["a"], unit_vectors(1))] * 2)
    with pytest.raises(BadRequestError, match="NUL"):
        await store.put_documents("bank", [good, document("nul", ["x"], unit_vectors(1), {"k": "a\x00b"})])
    with pytest.raises(BadRequestError, match="not a JSON number"):
        await store.put_documents("bank", [good, document("nan", ["x"], unit_vectors(1), {"k": float("nan")})])
    # All or nothing: the good document of each refused batch was not stored.
    assert await store.document_uuids("bank", ["good"]) == set()

    # A NUL inside a chunk's text carries nothing and PostgreSQL text cannot hold it: it is dropped.
    await store.put_documents("bank", [document("nul-text", ["a\x00b"], unit_vectors(1))])
    assert (await store.keyword_search("bank", "ab", 1, None))[0].text == "ab"


async def test_a_missing_bank_is_404_for_every_bank_operation(store: PGVectorStore):
    vector = unit_vectors(1)[0].tolist()
    calls = [
        store.put_documents("nope", [document("d", ["x"], unit_vectors(1))]),
        store.delete_documents("nope", ["d"]),
        store.get_documents("nope", ["d"]),
        store.document_uuids("nope", ["d"]),
        store.vector_search("nope", vector, 3, None),
        store.keyword_search("nope", "x", 3, None),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match="memory bank 'nope' not found"):
            await call
    assert await store.drop_bank("nope") is False


# -- search --------------------------------------------------------------------------------------------


async def test_flat_search_is_exact_with_cosine_scores(store: PGVectorStore):
    await store.create_bank(bank())
    vectors = unit_vectors(300)
    await store.put_documents(
        "bank",
        [document(f"d{i:02}", [f"chunk {j}" for j in range(10)], vectors[i * 10 : i * 10 + 10]) for i in range(30)],
    )
    for query in unit_vectors(5, seed=1):
        hits = await store.vector_search("bank", query.tolist(), 8, None)
        scores = vectors @ query
        best = np.argsort(-scores)[:8]
        assert [(h.document_uuid, h.chunk_index) for h in hits] == [(f"d{i // 10:02}", i % 10) for i in best]
        assert [h.score for h in hits] == pytest.approx(scores[best].tolist(), abs=1e-5)
        assert hits[0].text == f"chunk {best[0] % 10}"


async def test_wrong_query_dimension_or_k_is_400(store: PGVectorStore):
    await store.create_bank(bank())
    with pytest.raises(BadRequestError, match="3 dimensions; bank 'bank' stores 16"):
        await store.vector_search("bank", [1.0, 0.0, 0.0], 3, None)
    with pytest.raises(BadRequestError, match="k: expected at least 1, got 0"):
        await store.vector_search("bank", unit_vectors(1)[0].tolist(), 0, None)
    with pytest.raises(BadRequestError, match="k: expected at least 1"):
        await store.keyword_search("bank", "word", -1, None)


async def test_hnsw_bank_uses_its_index_finds_the_nearest_and_honours_filters(
    store: PGVectorStore, db: psycopg.AsyncConnection[Any], prefix: str
):
    await store.create_bank(bank("h", index="hnsw"))
    await store.create_bank(bank("f"))
    vectors = unit_vectors(2000)
    docs = [document(f"d{i:04}", [f"c{i}"], vectors[i : i + 1], {"rare": i % 250 == 0}) for i in range(2000)]
    await store.put_documents("h", docs)

    indexes = sql.SQL("SELECT indexdef FROM pg_indexes WHERE tablename LIKE {}").format(
        sql.Literal(prefix + "chunks_%")
    )
    definitions = [row[0] for row in await (await db.execute(indexes)).fetchall()]
    assert sum("USING hnsw (embedding vector_ip_ops)" in d for d in definitions) == 1  # the hnsw bank's, not flat's

    queries = unit_vectors(20, seed=3)
    found = 0
    for query in queries:
        hits = await store.vector_search("h", query.tolist(), 10, None)
        assert len(hits) == 10
        found += len({h.document_uuid for h in hits} & {f"d{i:04}" for i in np.argsort(-(vectors @ query))[:10]})
    assert found / 200 >= 0.95  # recall@10

    # 8 documents match: fewer than k, so the search falls back to an exact scan and finds all of them.
    rare = [i for i in range(2000) if i % 250 == 0]
    for query in queries[:3]:
        hits = await store.vector_search("h", query.tolist(), 10, parse_filter({"rare": True}))
        expected = sorted(rare, key=lambda i: -float(vectors[i] @ query))
        assert [h.document_uuid for h in hits] == [f"d{i:04}" for i in expected]


async def test_keyword_search_ranks_chunks_sharing_the_query_words(store: PGVectorStore):
    await store.create_bank(bank())
    texts = {
        "fox": "The quick brown fox jumps over the lazy dog; foxes run fast.",
        "cat": "A cat sleeps in the sun all day.",
        "dog": "Dogs running in the park chase a ball.",
        "both": "A fox and a cat became friends.",
    }
    vectors = unit_vectors(len(texts))
    await store.put_documents(
        "bank",
        [document(k, [t], vectors[i : i + 1], {"kind": k}) for i, (k, t) in enumerate(texts.items())],
    )

    hits = await store.keyword_search("bank", "running foxes", 10, None)
    # english stemming: 'foxes' finds 'fox', 'running' finds 'run'; the chunk with both words ranks first.
    assert next(h.document_uuid for h in hits) == "fox"
    assert {h.document_uuid for h in hits} == {"fox", "both", "dog"}
    assert all(a.score >= b.score > 0 for a, b in itertools.pairwise(hits))
    assert [h.document_uuid for h in await store.keyword_search("bank", "fox", 10, parse_filter({"kind": "both"}))] == [
        "both"
    ]
    assert await store.keyword_search("bank", "elephant", 10, None) == []
    assert await store.keyword_search("bank", "the of and", 10, None) == []  # only stop words
    assert await store.keyword_search("bank", "') | !'zzz' & (' ; --", 10, None) == []


async def test_simple_text_search_config_keeps_words_as_written(make_store: Callable[..., Any]):
    store = await make_store(text_search_config="simple")
    await store.create_bank(bank())
    await store.put_documents("bank", [document("d", ["the foxes"], unit_vectors(1))])
    assert await store.keyword_search("bank", "fox", 5, None) == []
    assert [h.text for h in await store.keyword_search("bank", "the", 5, None)] == ["the foxes"]


async def test_unknown_text_search_config_is_refused_at_start(make_store: Callable[..., Any]):
    with pytest.raises(ProviderError, match=r"text_search_config 'klingon'.*it has: .*english"):
        await make_store(text_search_config="klingon")


# -- filters -------------------------------------------------------------------------------------------

KEYS = ["a", "b", "n", "s", "flag"]
VALUES: list[Any] = [-3, 0, 1, 1.0, 2, 2.5, -0.5, 10**20, "", "a", "ab", "B", "b", "é", "1", True, False, None]
VALUES += [[1, "a"], {"x": 1}]  # not scalars: equal to no filter value, comparable with none
# Filter operands: what metadata holds, and numbers it cannot hold (jsonb has no NaN or infinity).
SCALARS = [v for v in VALUES if not isinstance(v, (list, dict))] + [float("inf"), float("-inf"), float("nan")]
ORDERED = [v for v in SCALARS if not isinstance(v, bool) and v is not None]


def random_metadata(rng: random.Random) -> dict[str, Any]:
    return {key: rng.choice(VALUES) for key in [*KEYS, "extra"] if rng.random() < 0.7}


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for _ in range(rng.randint(1, 2)):
        if depth < 2 and rng.random() < 0.3:
            raw[rng.choice(["$and", "$or"])] = [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]
            continue
        key = rng.choice([*KEYS, "missing"])
        op = rng.choice(["eq", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"])
        if op == "eq":
            raw[key] = rng.choice(SCALARS)
        elif op in ("$in", "$nin"):
            raw[key] = {op: rng.sample(SCALARS, rng.randint(0, 3))}
        elif op in ("$eq", "$ne"):
            raw[key] = {op: rng.choice(SCALARS)}
        else:
            raw[key] = {op: rng.choice(ORDERED)}
    return raw


async def test_filters_select_exactly_what_matches_selects(store: PGVectorStore):
    """Property-style: many random filters over random metadata; the SQL agrees with the reference semantics."""
    rng = random.Random(5)
    await store.create_bank(bank())
    metadata = {f"d{i:02}": random_metadata(rng) for i in range(60)}
    vectors = unit_vectors(60)
    await store.put_documents(
        "bank",
        [document(u, [f"memo number {u}"], vectors[i : i + 1], md) for i, (u, md) in enumerate(metadata.items())],
    )
    query = unit_vectors(1, seed=9)[0].tolist()
    selective = 0
    for _ in range(400):
        raw = random_filter(rng)
        filter_ = parse_filter(raw)
        expected = {u for u, md in metadata.items() if matches(filter_, md)}
        got = {h.document_uuid for h in await store.vector_search("bank", query, 100, filter_)}
        assert got == expected, raw
        selective += 0 < len(expected) < 60
    assert selective > 100  # the random filters were not all trivially everything or nothing

    for _ in range(30):
        raw = random_filter(rng)
        filter_ = parse_filter(raw)
        expected = {u for u, md in metadata.items() if matches(filter_, md)}
        got = {h.document_uuid for h in await store.keyword_search("bank", "memo", 100, filter_)}
        assert got == expected, raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"s": {"$gt": "a\x00z"}}, {"ab", "b"}),  # NUL sorts first: 'a' < 'a\0z' < 'ab'
        ({"s": {"$lte": "a\x00"}}, {"a", "B"}),
        ({"s": "a\x00"}, set()),
        ({"s": {"$ne": "a\x00"}}, {"a", "ab", "b", "B", "none"}),
        ({"s\x00": {"$nin": ["a"]}}, {"a", "ab", "b", "B", "none"}),
        ({"s\x00": "a"}, set()),
        ({"s": {"$lt": "b"}}, {"a", "ab", "B"}),  # code point order: 'B' < 'a'
    ],
)
async def test_filters_with_nul_characters_follow_the_reference(store: PGVectorStore, raw, expected):
    await store.create_bank(bank())
    values = ["a", "ab", "b", "B"]
    docs = [document(v, ["x"], unit_vectors(1), {"s": v}) for v in values] + [document("none", ["x"], unit_vectors(1))]
    await store.put_documents("bank", docs)
    filter_ = parse_filter(raw)
    assert expected == {d.uuid for d in docs if matches(filter_, d.metadata)}
    hits = await store.vector_search("bank", unit_vectors(1)[0].tolist(), 10, filter_)
    assert {h.document_uuid for h in hits} == expected


async def test_sql_in_names_keys_and_values_is_only_data(
    store: PGVectorStore, db: psycopg.AsyncConnection[Any], prefix: str
):
    evil = f"x'); DROP TABLE {prefix}documents; --"
    key = "k' OR '1'='1"
    await store.create_bank(bank(evil, name=evil))
    vectors = unit_vectors(2)
    await store.put_documents(
        evil,
        [
            document(evil, [evil], vectors[:1], {key: evil, "n": 1}),
            document("plain", ["plain text"], vectors[1:], {"k": "v"}),
        ],
    )
    for raw in ({key: evil}, {key: {"$in": [evil]}}, {"$or": [{key: {"$gte": evil}}]}):
        hits = await store.vector_search(evil, vectors[1].tolist(), 10, parse_filter(raw))
        assert [h.document_uuid for h in hits] == [evil]
    hits = await store.vector_search(evil, vectors[1].tolist(), 10, parse_filter({"k": "' OR 1=1 --"}))
    assert hits == []
    assert [h.document_uuid for h in await store.keyword_search(evil, "DROP TABLE", 10, None)] == [evil]
    assert (await store.get_documents(evil, [evil]))[0].metadata == {key: evil, "n": 1}
    assert await store.delete_documents(evil, [evil]) == [evil]
    assert await store.drop_bank(evil) is True
    tables = sql.SQL("SELECT count(*) FROM pg_tables WHERE tablename IN ({}, {})").format(
        sql.Literal(prefix + "banks"), sql.Literal(prefix + "documents")
    )
    assert await scalar(db, tables) == 2


# -- drop, restart, shared state -----------------------------------------------------------------------


async def test_drop_removes_the_bank_with_everything_in_it(
    store: PGVectorStore, db: psycopg.AsyncConnection[Any], prefix: str
):
    await store.create_bank(bank("gone", index="hnsw"))
    await store.create_bank(bank("kept"))
    vectors = unit_vectors(2)
    await store.put_documents("gone", [document("d", ["doomed"], vectors[:1])])
    await store.put_documents("kept", [document("d", ["kept"], vectors[1:])])

    assert await store.drop_bank("gone") is True
    assert await store.drop_bank("gone") is False
    assert await store.get_bank("gone") is None
    assert [b.uuid for b in await store.list_banks()] == ["kept"]
    with pytest.raises(NotFoundError):
        await store.vector_search("gone", vectors[0].tolist(), 3, None)
    tables = sql.SQL("SELECT count(*) FROM pg_tables WHERE tablename LIKE {}").format(sql.Literal(prefix + "chunks_%"))
    assert await scalar(db, tables) == 1
    documents = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(prefix + "documents"))
    assert await scalar(db, documents) == 1
    assert [h.text for h in await store.vector_search("kept", vectors[0].tolist(), 3, None)] == ["kept"]

    # The uuid is free again, for a bank with other settings.
    await store.create_bank(bank("gone", dim=4))
    assert (await store.get_bank("gone")).embedding_dimension == 4


async def test_a_new_store_finds_everything_after_a_restart(store: PGVectorStore, make_store: Callable[..., Any]):
    await store.create_bank(bank("h", index="hnsw"))
    vectors = unit_vectors(50)
    await store.put_documents("h", [document(f"d{i}", [f"text {i}"], vectors[i : i + 1], {"i": i}) for i in range(50)])
    query = unit_vectors(1, seed=2)[0].tolist()
    before = (await store.list_banks(), await store.vector_search("h", query, 5, parse_filter({"i": {"$lt": 25}})))
    await store.close()

    again = await make_store()
    after = (await again.list_banks(), await again.vector_search("h", query, 5, parse_filter({"i": {"$lt": 25}})))
    assert after == before
    assert before[0][0].chunk_count == 50


async def test_stores_on_one_database_share_state_and_start_together(make_store: Callable[..., Any]):
    # Several servers starting at once against fresh tables: the schema is created once, nobody fails.
    one, two, three = await asyncio.gather(make_store(), make_store(), make_store())
    await one.create_bank(bank())
    vectors = unit_vectors(2)
    await two.put_documents("bank", [document("d1", ["written by two"], vectors[:1])])
    assert [h.text for h in await one.vector_search("bank", vectors[0].tolist(), 1, None)] == ["written by two"]
    with pytest.raises(ConflictError):
        await three.create_bank(bank())
    assert await three.delete_documents("bank", ["d1"]) == ["d1"]
    assert (await one.get_bank("bank")).document_count == 0
    assert await two.drop_bank("bank") is True
    assert await one.list_banks() == []


async def test_concurrent_replacements_of_the_same_documents_all_succeed(make_store: Callable[..., Any]):
    one, two = await make_store(), await make_store()
    await one.create_bank(bank())
    vectors = unit_vectors(40)
    uuids = [f"d{i}" for i in range(20)]

    def batch(tag: str, order: list[str]) -> list[StoredDocument]:
        texts = [[f"{tag} {u} a", f"{tag} {u} b"] for u in order]
        return [document(u, texts[i], vectors[i * 2 : i * 2 + 2], {"by": tag}) for i, u in enumerate(order)]

    writes = [
        store.put_documents("bank", batch(f"w{n}", uuids if n % 2 else uuids[::-1]))
        for n, store in enumerate([one, two] * 4)
    ]
    await asyncio.gather(*writes)
    record = await one.get_bank("bank")
    assert (record.document_count, record.chunk_count) == (20, 40)
    # Each document is one whole version: its chunks come from the same write as its metadata.
    for doc in await one.get_documents("bank", uuids):
        hits = await one.keyword_search("bank", doc.uuid, 10, parse_filter({"by": doc.metadata["by"]}))
        assert sorted(h.text for h in hits if h.document_uuid == doc.uuid) == [
            f"{doc.metadata['by']} {doc.uuid} a",
            f"{doc.metadata['by']} {doc.uuid} b",
        ]


# -- connections ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_dsn", [False, True])
async def test_an_unreachable_server_is_a_503_naming_provider_and_host_but_not_the_password(use_dsn: bool):
    port = free_port()
    settings: dict[str, Any] = (
        {"dsn": f"postgresql://ann:hunter2-secret@127.0.0.1:{port}/memories"}
        if use_dsn
        else {"host": "127.0.0.1", "port": port, "db": "memories", "user": "ann", "password": "hunter2-secret"}
    )
    store = PGVectorStore(PGVectorConfig(**settings, connect_timeout_s=2), provider_id="shared-pg")
    with pytest.raises(ServiceUnavailableError) as error:
        await store.start()
    message = error.value.message
    assert "provider 'shared-pg' (remote::pgvector)" in message
    assert f"127.0.0.1:{port}/memories" in message
    assert "hunter2" not in message and "hunter2" not in str(error.value.to_body())
    assert error.value.provider == "shared-pg"


async def test_connections_killed_while_idle_are_replaced(
    postgres_uri: str, prefix: str, db: psycopg.AsyncConnection[Any]
):
    store = PGVectorStore(PGVectorConfig(dsn=postgres_uri, table_prefix=prefix, pool_size=2), provider_id="doomed")
    await store.start()
    await store.create_bank(bank())
    await asyncio.gather(store.get_bank("bank"), store.get_bank("bank"))  # two connections in the pool
    # As a server restart would: every connection of this provider (named in pg_stat_activity) is killed.
    killed = await scalar(
        db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'llama-stack doomed'",
    )
    assert killed == 2
    # The pooled connection is dead; the store notices and runs the call again on a fresh one.
    assert (await store.get_bank("bank")).uuid == "bank"
    await store.put_documents("bank", [document("d", ["after"], unit_vectors(1))])
    assert (await store.get_bank("bank")).document_count == 1
    await store.close()


async def test_a_server_without_pgvector_is_named_in_the_error(postgres_uri: str, db: psycopg.AsyncConnection[Any]):
    # pgvector is not a trusted extension: a plain user cannot create it in a database that lacks it.
    name = f"novec_{uuid.uuid4().hex[:8]}"
    await db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    await db.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    try:
        dsn = psycopg.conninfo.make_conninfo(postgres_uri, user=name, dbname=name)
        store = PGVectorStore(PGVectorConfig(dsn=dsn), provider_id="pg")
        with pytest.raises(ProviderError) as error:
            await store.start()
        assert "provider 'pg' (remote::pgvector): the PostgreSQL server at" in error.value.message
        assert f"/{name} as '{name}'" in error.value.message
        assert "pgvector extension" in error.value.message and "CREATE EXTENSION vector" in error.value.message
        assert error.value.code == "pgvector_unavailable"
    finally:
        await db.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        await db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
