"""Memory banks: named collections of documents, chunked and embedded, that agents and users retrieve from.

The seed's routes create, list and drop banks and insert, update, delete and fetch documents. Extensions:
``/memory_banks/register`` creates an empty bank with its own settings (chunking, embedding model, index,
hybrid retrieval, reranking), and ``/memory_bank/query`` retrieves the chunks most relevant to a query.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from .common import JsonObject, MemoryBankDocument, ProviderId, Schema
from .dispatch import AllProviders, ByOwner, Creates, dispatch
from .routes import webmethod


class MemoryBankConfig(Schema):
    """Extension: how a bank chunks, embeds, indexes and retrieves. Unset fields take the provider's defaults."""

    embedding_model: str | None = Field(
        default=None, description="An embedding model the distribution serves (model_type embedding)."
    )
    chunk_size_tokens: int | None = Field(default=None, ge=16, le=8192, description="Tokens per chunk.")
    overlap_tokens: int | None = Field(default=None, ge=0, description="Tokens each chunk repeats from the one before.")
    index: Literal["flat", "hnsw"] | None = Field(
        default=None, description="flat: exact search; hnsw: approximate, for large corpora."
    )
    hybrid: bool | None = Field(
        default=None, description="Also match the query's words (keyword search) and merge both rankings."
    )
    rerank_model: str | None = Field(
        default=None, description="A rerank model the distribution serves; reorders the retrieved chunks."
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> MemoryBankConfig:
        if (
            self.chunk_size_tokens is not None
            and self.overlap_tokens is not None
            and self.overlap_tokens >= self.chunk_size_tokens
        ):
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than chunk_size_tokens "
                f"({self.chunk_size_tokens})"
            )
        return self


class MemoryBank(Schema):
    uuid: str
    name: str
    # Extension fields, filled in by the stack's answers: the settings in force and the bank's size.
    embedding_model: str | None = None
    embedding_dimension: int | None = None
    chunk_size_tokens: int | None = None
    overlap_tokens: int | None = None
    index: Literal["flat", "hnsw"] | None = None
    hybrid: bool | None = None
    rerank_model: str | None = None
    document_count: int | None = None
    chunk_count: int | None = None


class RegisterMemoryBankRequest(Schema):
    """Extension: create an empty bank with its own settings; add documents with /memory_bank/insert."""

    bank_uuid: str = Field(min_length=1)
    bank_name: str
    config: MemoryBankConfig = Field(default_factory=MemoryBankConfig)
    provider_id: ProviderId | None = Field(
        default=None,
        description="Extension: the provider that keeps the bank; unset: the memory_banks API's first provider.",
    )


# A metadata filter, as a JSON object:
#   {"author": "ann"}                          equality (a scalar), every key must hold
#   {"year": {"$gte": 2020, "$lt": 2024}}      comparisons: $eq $ne $gt $gte $lt $lte
#   {"tag": {"$in": ["a", "b"]}}               membership: $in $nin
#   {"$and": [{...}, {...}]}, {"$or": [...]}   combinations
# A chunk whose document lacks the key never matches (except $ne and $nin, which it satisfies).
MetadataFilter = JsonObject


class QueryDocumentsRequest(Schema):
    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=100, description="How many chunks to answer.")
    filters: MetadataFilter | None = Field(
        default=None,
        description=(
            "Only chunks whose document metadata matches: {key: value} for equality, {key: {$op: value}} with "
            "$eq $ne $gt $gte $lt $lte $in $nin, and {$and: [...]} / {$or: [...]} (nested at most 16 levels deep)."
        ),
    )


class MemoryChunk(Schema):
    text: str
    score: float = Field(description="Higher is more relevant; comparable within one answer.")
    document_uuid: str
    chunk_index: int = Field(description="The chunk's place in its document, from 0.")
    metadata: JsonObject = Field(default_factory=dict, description="The document's metadata.")


class QueryDocumentsResponse(Schema):
    chunks: list[MemoryChunk] = Field(description="Most relevant first.")


@runtime_checkable
class MemoryBanks(Protocol):
    @webmethod("POST", "/memory_banks/create")
    @dispatch(Creates(resource="bank", field="bank_uuid", provider_field="provider_id"))
    async def create_memory_bank(
        self, bank_uuid: str, bank_name: str, documents: list[MemoryBankDocument], provider_id: ProviderId | None = None
    ) -> None:
        """Create a memory bank holding the given documents."""
        ...

    @webmethod("DELETE", "/memory_banks/drop")
    @dispatch(ByOwner(resource="bank", field="bank_uuid", forgets=True))
    async def drop_memory_bank(self, bank_uuid: str) -> str:
        """Drop a memory bank and its documents; answers the dropped bank's uuid."""
        ...

    @webmethod("GET", "/memory_banks/get", response_format="jsonl")
    @dispatch(AllProviders(resource="bank", item_field="uuid"))
    async def list_memory_banks(self) -> list[MemoryBank]:
        """List the memory banks."""
        ...

    @webmethod("POST", "/memory_bank/insert")
    @dispatch(ByOwner(resource="bank", field="bank_uuid"))
    async def insert_memory_documents(self, bank_uuid: str, documents: list[MemoryBankDocument]) -> None:
        """Add documents to a memory bank."""
        ...

    @webmethod("POST", "/memory_bank/update")
    @dispatch(ByOwner(resource="bank", field="bank_uuid"))
    async def update_memory_documents(self, bank_uuid: str, documents: list[MemoryBankDocument]) -> None:
        """Replace documents of a memory bank, matched by uuid."""
        ...

    @webmethod("POST", "/memory_bank/delete", response_format="jsonl")
    @dispatch(ByOwner(resource="bank", field="bank_uuid"))
    async def delete_memory_documents(self, bank_uuid: str, document_uuids: list[str]) -> list[str]:
        """Delete documents from a memory bank by uuid; answers the uuids deleted."""
        ...

    @webmethod("POST", "/memory_bank/get", response_format="jsonl")
    @dispatch(ByOwner(resource="bank", field="bank_uuid"))
    async def get_memory_documents(self, bank_uuid: str, document_uuids: list[str]) -> list[MemoryBankDocument]:
        """Fetch documents of a memory bank by uuid."""
        ...

    @webmethod("POST", "/memory_banks/register")
    @dispatch(Creates(resource="bank", field="request.bank_uuid", provider_field="request.provider_id"))
    async def register_memory_bank(self, request: RegisterMemoryBankRequest) -> MemoryBank:
        """Extension: create an empty bank with its own settings; answers the bank with the settings in force."""
        ...

    @webmethod("POST", "/memory_bank/query")
    @dispatch(ByOwner(resource="bank", field="bank_uuid"))
    async def query_memory_bank(self, bank_uuid: str, request: QueryDocumentsRequest) -> QueryDocumentsResponse:
        """Extension: the chunks most relevant to a query, most relevant first."""
        ...
