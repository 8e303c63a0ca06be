"""The storage seam of memory banks: what a store keeps and how the bank service talks to it.

A store (``inline::faiss``: SQLite + faiss files; ``remote::pgvector``: PostgreSQL) keeps banks, their
documents (the original bytes, mime type and metadata), the documents' chunks and the chunks' vectors, and
searches them. The bank service (``service.py``) does everything else — parsing documents, chunking,
embedding, merging rankings, reranking — so both stores behave the same by construction.

Durability contract: when a writing method returns, what it wrote survives a crash of the process
(``kill -9``) and is found after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .filters import Filter


@dataclass
class BankRecord:
    uuid: str
    name: str
    embedding_model: str
    embedding_dimension: int
    chunk_size_tokens: int
    overlap_tokens: int
    index: Literal["flat", "hnsw"]
    hybrid: bool
    rerank_model: str | None
    document_count: int = 0
    chunk_count: int = 0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> BankRecord:
        """A bank from a row of its settings' columns, in the field order above, then its document and chunk
        counts: how both stores read a bank back from SQL."""
        uuid, name, model, dimension, chunk_size, overlap, index, hybrid, rerank_model, documents, chunks = row
        return cls(
            uuid=uuid,
            name=name,
            embedding_model=model,
            embedding_dimension=dimension,
            chunk_size_tokens=chunk_size,
            overlap_tokens=overlap,
            index=index,
            hybrid=bool(hybrid),
            rerank_model=rerank_model,
            document_count=int(documents),
            chunk_count=int(chunks),
        )


@dataclass
class StoredChunk:
    index: int  # its place in the document, from 0
    text: str
    vector: list[float]  # normalised to unit length: inner product is cosine similarity


@dataclass
class StoredDocument:
    uuid: str
    content: bytes
    mime_type: str
    metadata: dict[str, Any]
    chunks: list[StoredChunk] = field(default_factory=list)


@dataclass
class Hit:
    """A chunk a search found; ``score`` is higher for better matches (cosine similarity, or a keyword score)."""

    document_uuid: str
    chunk_index: int
    text: str
    score: float
    metadata: dict[str, Any]


class MemoryStore(Protocol):
    async def start(self) -> None:
        """Open connections, create tables, load indexes (incrementally when possible)."""

    async def close(self) -> None: ...

    async def create_bank(self, bank: BankRecord) -> None:
        """Add a bank; raises ConflictError when the uuid exists."""

    async def get_bank(self, bank_uuid: str, counts: bool = True) -> BankRecord | None:
        """The bank with current document_count and chunk_count, or None.

        ``counts=False``: the settings alone (both counts 0), without counting the bank's rows; what every
        request but a listing needs, queries included.
        """

    async def list_banks(self, counts: bool = True) -> list[BankRecord]:
        """Every bank, oldest first; ``counts`` as for :meth:`get_bank`."""

    async def drop_bank(self, bank_uuid: str) -> bool:
        """Remove the bank with all its documents, chunks and vectors; False when there was none."""

    async def document_uuids(self, bank_uuid: str, uuids: list[str]) -> set[str]:
        """Which of ``uuids`` the bank holds."""

    async def put_documents(self, bank_uuid: str, documents: list[StoredDocument]) -> None:
        """Store the documents, replacing any with the same uuid (chunks and vectors too), all or nothing."""

    async def delete_documents(self, bank_uuid: str, uuids: list[str]) -> list[str]:
        """Remove the documents with their chunks and vectors; answers the uuids that existed, in input order."""

    async def get_documents(self, bank_uuid: str, uuids: list[str]) -> list[StoredDocument]:
        """The documents found (without chunks), in input order."""

    async def vector_search(self, bank_uuid: str, vector: list[float], k: int, filter_: Filter | None) -> list[Hit]:
        """The k chunks nearest to ``vector`` (unit length) among those whose document matches, best first."""

    async def keyword_search(self, bank_uuid: str, query: str, k: int, filter_: Filter | None) -> list[Hit]:
        """The k chunks that best match the query's words (e.g. BM25), best first; [] when no word matches."""
