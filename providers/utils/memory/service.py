"""The memory-bank service: the whole MemoryBanks API on top of a MemoryStore and the inference API.

What happens where
------------------
Everything but storage and search happens here, so every store behaves the same by construction.
Documents are checked (base64, size, mime type), turned into text (``documents.py``), cut into
overlapping token windows (``chunking.py``), embedded through the inference API (the InferenceRouter, so
any embedding provider serves: inline sentence-transformers, Together, an OpenAI-compatible server),
normalised to unit length and handed to the store in one call per request: all documents of a request
are stored, or none. A query is embedded the same way; a hybrid bank also searches the query's words and
merges both rankings by reciprocal rank fusion; a bank with a rerank model has the candidates reordered
by it, and their scores become its relevance scores.

Embedding models and dimensions
-------------------------------
A bank records its embedding model (the model_id, aliases resolved) and the dimension of its vectors when
it is registered: one probe embedding per model learns the dimension. Every later embedding is checked
against the bank's: a model id that now answers vectors of another size (the distribution changed what
serves it) is a 409 naming both sizes, never vectors from two spaces in one index.

Concurrency
-----------
Parsing and chunking run in a worker thread (a 10 MB PDF must not stall the event loop); embedding runs
on the provider. Writes to one bank take that bank's lock only around the final checks and the store's
write, so two requests inserting the same uuid cannot both pass the "not yet in the bank" check, while
the slow part (embedding) of concurrent requests overlaps. The lock is per process: servers sharing one
PostgreSQL rely on the store's write replacing a document wholesale.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from llama_stack.apis.common import MemoryBankDocument
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, ProviderError
from llama_stack.apis.inference import EmbeddingsRequest, RerankRequest
from llama_stack.apis.memory_banks import (
    MemoryBank,
    MemoryBankConfig,
    MemoryChunk,
    QueryDocumentsRequest,
    QueryDocumentsResponse,
    RegisterMemoryBankRequest,
)
from llama_stack.config import ConfigError

from .chunking import chunk_text
from .config import MemoryBankDefaults
from .documents import decode_base64, document_text
from .filters import parse_filter
from .store import BankRecord, Hit, MemoryStore, StoredChunk, StoredDocument

# Texts per embeddings request: enough for the provider to fill its own forward passes (sentence-transformers
# runs its batch_size texts at a time), well under the route's limit of 2048 and providers' max_batch_texts.
EMBEDDING_BATCH = 256
# Reciprocal rank fusion (Cormack, Clarke & Büttcher, 2009): a chunk ranked r in a ranking adds
# 1 / (RRF_K + r); 60 is the paper's constant, which damps the difference between the very first ranks.
RRF_K = 60
# Hybrid retrieval and reranking choose among more candidates than they answer: CANDIDATES_PER_RESULT per
# chunk asked for, at least MIN_CANDIDATES, at most MAX_CANDIDATES.
CANDIDATES_PER_RESULT = 4
MIN_CANDIDATES = 20
MAX_CANDIDATES = 200
# A "no such bank" message names at most this many of the banks that exist.
NAMED_BANKS = 20
PROBE_TEXT = "How many dimensions does this embedding have?"

SETTINGS = ("embedding_model", "chunk_size_tokens", "overlap_tokens", "index", "hybrid", "rerank_model")


class MemoryBanksService:
    """Implements ``llama_stack.apis.memory_banks.MemoryBanks`` for any ``MemoryStore``."""

    def __init__(self, store: MemoryStore, inference: Any, defaults: MemoryBankDefaults, provider_id: str):
        self.store = store
        self._inference = inference  # the InferenceRouter: embeddings, rerank, and the models it serves
        self._defaults = defaults
        self._provider_id = provider_id
        self._dimensions: dict[str, int] = {}  # model_id -> vector size, learnt by one probe per model
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def start(self) -> None:
        """Check the default models, then open the store: a misconfigured distribution fails at start-up."""
        try:
            self._served_model(self._defaults.embedding_model, "embedding", "embedding_model")
            if self._defaults.rerank_model is not None:
                self._served_model(self._defaults.rerank_model, "rerank", "rerank_model")
        except BadRequestError as exc:
            raise ConfigError(f"provider '{self._provider_id}': config {exc.message}") from None
        await self.store.start()

    async def shutdown(self) -> None:
        await self.store.close()

    # Banks

    async def register_memory_bank(self, request: RegisterMemoryBankRequest) -> MemoryBank:
        bank = await self._new_bank(request.bank_uuid, request.bank_name, request.config, where="config.")
        async with self._locks[bank.uuid]:
            await self.store.create_bank(bank)
        return _memory_bank(bank)

    async def create_memory_bank(self, bank_uuid: str, bank_name: str, documents: list[MemoryBankDocument]) -> None:
        """The seed's create: a bank with the provider's defaults holding ``documents``, all or nothing."""
        if not bank_uuid:
            raise BadRequestError("bank_uuid: a bank needs a non-empty uuid", param="bank_uuid")
        bank = await self._new_bank(bank_uuid, bank_name, MemoryBankConfig(), where="")
        _unique_uuids(documents)
        prepared = await self._prepare(bank, documents)
        async with self._locks[bank_uuid]:
            await self.store.create_bank(bank)
            try:
                await self.store.put_documents(bank_uuid, prepared)
            except Exception:
                # A failed create leaves no empty bank behind that would refuse the retry with a 409.
                await self.store.drop_bank(bank_uuid)
                raise

    async def drop_memory_bank(self, bank_uuid: str) -> str:
        async with self._locks[bank_uuid]:
            if not await self.store.drop_bank(bank_uuid):
                raise await self._no_bank(bank_uuid)
        return bank_uuid

    async def list_memory_banks(self) -> list[MemoryBank]:
        return [_memory_bank(bank) for bank in await self.store.list_banks()]

    # Documents

    async def insert_memory_documents(self, bank_uuid: str, documents: list[MemoryBankDocument]) -> None:
        bank = await self._bank(bank_uuid)
        uuids = _unique_uuids(documents)
        await self._refuse_present(bank_uuid, uuids)  # before the embedding work, which would be wasted
        prepared = await self._prepare(bank, documents)
        async with self._locks[bank_uuid]:
            await self._bank(bank_uuid)  # not dropped meanwhile
            await self._refuse_present(bank_uuid, uuids)  # not inserted by a concurrent request meanwhile
            await self.store.put_documents(bank_uuid, prepared)

    async def update_memory_documents(self, bank_uuid: str, documents: list[MemoryBankDocument]) -> None:
        bank = await self._bank(bank_uuid)
        uuids = _unique_uuids(documents)
        await self._require_present(bank_uuid, uuids)
        prepared = await self._prepare(bank, documents)
        async with self._locks[bank_uuid]:
            await self._bank(bank_uuid)
            await self._require_present(bank_uuid, uuids)  # not deleted by a concurrent request meanwhile
            await self.store.put_documents(bank_uuid, prepared)

    async def delete_memory_documents(self, bank_uuid: str, document_uuids: list[str]) -> list[str]:
        await self._bank(bank_uuid)
        async with self._locks[bank_uuid]:
            return await self.store.delete_documents(bank_uuid, list(dict.fromkeys(document_uuids)))

    async def get_memory_documents(self, bank_uuid: str, document_uuids: list[str]) -> list[MemoryBankDocument]:
        await self._bank(bank_uuid)
        found = await self.store.get_documents(bank_uuid, list(dict.fromkeys(document_uuids)))
        return [
            MemoryBankDocument(
                uuid=document.uuid,
                content=base64.b64encode(document.content).decode("ascii"),
                metadata=document.metadata,
                mime_type=document.mime_type,
            )
            for document in found
        ]

    # Retrieval

    async def query_memory_bank(self, bank_uuid: str, request: QueryDocumentsRequest) -> QueryDocumentsResponse:
        bank = await self._bank(bank_uuid)
        filter_ = parse_filter(request.filters, "filters") if request.filters is not None else None
        vector = (await self._embed(bank, [request.query]))[0].tolist()
        wanted = request.k
        if bank.hybrid or bank.rerank_model is not None:
            wanted = min(max(request.k * CANDIDATES_PER_RESULT, MIN_CANDIDATES), MAX_CANDIDATES)
        if bank.hybrid:
            by_vector, by_words = await asyncio.gather(
                self.store.vector_search(bank_uuid, vector, wanted, filter_),
                self.store.keyword_search(bank_uuid, request.query, wanted, filter_),
            )
            hits = reciprocal_rank_fusion([by_vector, by_words])
        else:
            hits = await self.store.vector_search(bank_uuid, vector, wanted, filter_)
        if bank.rerank_model is not None and hits:
            hits = await self._rerank(bank, request.query, hits[:wanted], request.k)
        return QueryDocumentsResponse(chunks=[_memory_chunk(hit) for hit in hits[: request.k]])

    # Helpers

    async def _new_bank(self, bank_uuid: str, name: str, config: MemoryBankConfig, where: str) -> BankRecord:
        """The bank a registration describes (defaults filled in, models checked, dimension learnt); 409 if taken."""
        if await self.store.get_bank(bank_uuid, counts=False) is not None:
            raise ConflictError(
                f"Memory bank '{bank_uuid}' already exists; drop it first or choose another uuid", param="bank_uuid"
            )
        settings = {
            key: getattr(config, key) if getattr(config, key) is not None else getattr(self._defaults, key)
            for key in SETTINGS
        }
        if settings["overlap_tokens"] >= settings["chunk_size_tokens"]:
            # Each may come from the defaults, so the request's own validator cannot see the pair.
            raise BadRequestError(
                f"{where}overlap_tokens: {settings['overlap_tokens']} must be smaller than chunk_size_tokens "
                f"({settings['chunk_size_tokens']})",
                param=f"{where}overlap_tokens",
            )
        model = self._served_model(settings["embedding_model"], "embedding", f"{where}embedding_model")
        if settings["rerank_model"] is not None:
            settings["rerank_model"] = self._served_model(settings["rerank_model"], "rerank", f"{where}rerank_model")
        settings["embedding_model"] = model
        return BankRecord(uuid=bank_uuid, name=name, embedding_dimension=await self._dimension(model), **settings)

    def _served(self, model_type: str) -> str:
        """The served models of one type, for messages."""
        return ", ".join(sorted(m.model_id for m in self._inference.models(model_type))) or "none"

    def _served_model(self, name: str, model_type: str, param: str) -> str:
        """The model_id of ``name`` (an id or an alias), a served model of ``model_type``; a 400 otherwise."""
        # On every insert and query: the list of served models is only worked out for a message.
        for model in self._inference.models():
            if name == model.model_id or name in model.aliases:
                if model.model_type != model_type:
                    raise BadRequestError(
                        f"{param}: model '{name}' has model_type '{model.model_type}'; it must be of type "
                        f"'{model_type}' (served {model_type} models: {self._served(model_type)})",
                        param=param,
                    )
                return model.model_id
        raise BadRequestError(
            f"{param}: model '{name}' is not served by this distribution "
            f"(served {model_type} models: {self._served(model_type)})",
            param=param,
        )

    async def _dimension(self, model_id: str) -> int:
        if model_id not in self._dimensions:
            response = await self._inference.embeddings(EmbeddingsRequest(model=model_id, contents=[PROBE_TEXT]))
            if len(response.embeddings) != 1 or not response.embeddings[0]:
                raise ProviderError(f"Embedding model '{model_id}' answered no vector for a probe text")
            self._dimensions[model_id] = len(response.embeddings[0])
        return self._dimensions[model_id]

    async def _bank(self, bank_uuid: str) -> BankRecord:
        """The bank's settings (no counts: this runs on every request, queries included); a 404 when missing."""
        bank = await self.store.get_bank(bank_uuid, counts=False)
        if bank is None:
            raise await self._no_bank(bank_uuid)
        return bank

    async def _no_bank(self, bank_uuid: str) -> NotFoundError:
        uuids = sorted(bank.uuid for bank in await self.store.list_banks(counts=False))
        named = ", ".join(uuids[:NAMED_BANKS]) or "none"
        if len(uuids) > NAMED_BANKS:
            named += f" and {len(uuids) - NAMED_BANKS} more"
        return NotFoundError(f"Memory bank '{bank_uuid}' not found (banks: {named})", param="bank_uuid")

    async def _refuse_present(self, bank_uuid: str, uuids: list[str]) -> None:
        present = await self.store.document_uuids(bank_uuid, uuids)
        if present:
            first = next(i for i, uuid in enumerate(uuids) if uuid in present)
            listed = ", ".join(f"'{uuid}'" for uuid in uuids if uuid in present)
            raise ConflictError(
                f"Memory bank '{bank_uuid}' already holds documents {listed}; /memory_bank/update replaces documents",
                param=f"documents[{first}].uuid",
            )

    async def _require_present(self, bank_uuid: str, uuids: list[str]) -> None:
        present = await self.store.document_uuids(bank_uuid, uuids)
        missing = [uuid for uuid in uuids if uuid not in present]
        if missing:
            listed = ", ".join(f"'{uuid}'" for uuid in missing)
            raise NotFoundError(
                f"Memory bank '{bank_uuid}' has no documents {listed} to update; /memory_bank/insert adds documents",
                param=f"documents[{uuids.index(missing[0])}].uuid",
            )

    async def _prepare(self, bank: BankRecord, documents: list[MemoryBankDocument]) -> list[StoredDocument]:
        """The documents checked, parsed, chunked and embedded, ready for one ``put_documents``."""
        parsed = await asyncio.to_thread(self._parse, bank, documents)
        texts = [text for _, chunks in parsed for text in chunks]
        vectors = await self._embed(bank, texts)
        prepared, row = [], 0
        for document, (content, chunks) in zip(documents, parsed, strict=True):
            stored = [
                StoredChunk(index=i, text=text, vector=vectors[row + i].tolist()) for i, text in enumerate(chunks)
            ]
            row += len(chunks)
            prepared.append(StoredDocument(document.uuid, content, document.mime_type, document.metadata, stored))
        return prepared

    def _parse(self, bank: BankRecord, documents: list[MemoryBankDocument]) -> list[tuple[bytes, list[str]]]:
        """Each document's bytes and chunks; a 400 naming the document and field at the first bad one."""
        limit = self._defaults.max_document_bytes
        parsed = []
        for i, document in enumerate(documents):
            content = decode_base64(document.content, f"documents[{i}].content")
            if len(content) > limit:
                raise BadRequestError(
                    f"documents[{i}].content: the document is {len(content)} bytes; the largest accepted is "
                    f"{limit} bytes (max_document_bytes)",
                    param=f"documents[{i}].content",
                    code="document_too_large",
                )
            text = document_text(content, document.mime_type, f"documents[{i}]")
            chunks = chunk_text(text, bank.chunk_size_tokens, bank.overlap_tokens)
            if not chunks:
                # Stored, it could never be retrieved: say so rather than accept it silently.
                raise BadRequestError(
                    f"documents[{i}].content: the {document.mime_type} document holds no text to index",
                    param=f"documents[{i}].content",
                )
            parsed.append((content, chunks))
        return parsed

    async def _embed(self, bank: BankRecord, texts: list[str]) -> np.ndarray:
        """Unit-length vectors of ``texts`` from the bank's model, checked against the bank's dimension."""
        model = self._bank_model(bank)
        rows: list[list[float]] = []
        for start in range(0, len(texts), EMBEDDING_BATCH):
            batch = texts[start : start + EMBEDDING_BATCH]
            response = await self._inference.embeddings(EmbeddingsRequest(model=model, contents=batch))
            if len(response.embeddings) != len(batch):
                raise ProviderError(
                    f"Embedding model '{model}' answered {len(response.embeddings)} vectors for {len(batch)} texts"
                )
            rows.extend(response.embeddings)
        wrong = next((len(row) for row in rows if len(row) != bank.embedding_dimension), None)
        if wrong is not None:
            raise ConflictError(
                f"Memory bank '{bank.uuid}' holds {bank.embedding_dimension}-dimensional vectors from embedding model "
                f"'{model}', which now answers {wrong}-dimensional vectors; serve the bank's model again, or "
                "register a new bank for this one",
                code="embedding_dimension_mismatch",
            )
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), bank.embedding_dimension)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0  # a zero vector stays zero rather than becoming NaNs
        return vectors / norms

    def _bank_model(self, bank: BankRecord) -> str:
        """The bank's embedding model, which the distribution must still serve (a 409 when it no longer does)."""
        try:
            return self._served_model(bank.embedding_model, "embedding", "embedding_model")
        except BadRequestError:
            raise ConflictError(
                f"Memory bank '{bank.uuid}' was embedded with '{bank.embedding_model}', which this distribution no "
                f"longer serves as an embedding model (served embedding models: {self._served('embedding')}); "
                "serve it again to insert into or query this bank",
                code="embedding_model_not_served",
            ) from None

    async def _rerank(self, bank: BankRecord, query: str, hits: list[Hit], k: int) -> list[Hit]:
        assert bank.rerank_model is not None
        model = self._served_model(bank.rerank_model, "rerank", "rerank_model")
        request = RerankRequest(model=model, query=query, documents=[hit.text for hit in hits], top_n=min(k, len(hits)))
        response = await self._inference.rerank(request)
        if any(not 0 <= result.index < len(hits) for result in response.results):
            raise ProviderError(f"Rerank model '{model}' answered an index outside the {len(hits)} documents sent")
        return [dataclasses.replace(hits[result.index], score=result.relevance_score) for result in response.results]


def reciprocal_rank_fusion(rankings: Sequence[list[Hit]]) -> list[Hit]:
    """One ranking from several: each chunk scores the sum of 1 / (RRF_K + its rank) over the rankings.

    Ranks, not scores, are merged because cosine similarities and keyword scores are on unrelated scales.
    Ties keep the order of the first ranking that holds the chunks.
    """
    scores: dict[tuple[str, int], float] = {}
    first: dict[tuple[str, int], Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            key = (hit.document_uuid, hit.chunk_index)
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(key, hit)
    order = sorted(scores, key=lambda key: -scores[key])
    return [dataclasses.replace(first[key], score=scores[key]) for key in order]


def _unique_uuids(documents: list[MemoryBankDocument]) -> list[str]:
    seen: dict[str, int] = {}
    for i, document in enumerate(documents):
        if not document.uuid:
            raise BadRequestError(
                f"documents[{i}].uuid: a document needs a non-empty uuid", param=f"documents[{i}].uuid"
            )
        if document.uuid in seen:
            raise BadRequestError(
                f"documents[{i}].uuid: '{document.uuid}' is also the uuid of documents[{seen[document.uuid]}]; "
                "each document of a request needs its own uuid",
                param=f"documents[{i}].uuid",
            )
        seen[document.uuid] = i
    return list(seen)


def _memory_bank(bank: BankRecord) -> MemoryBank:
    return MemoryBank(**dataclasses.asdict(bank))


def _memory_chunk(hit: Hit) -> MemoryChunk:
    return MemoryChunk(
        text=hit.text,
        score=hit.score,
        document_uuid=hit.document_uuid,
        chunk_index=hit.chunk_index,
        metadata=hit.metadata,
    )
