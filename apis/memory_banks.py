"""Memory banks: named collections of documents that agents retrieve from."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .common import MemoryBankDocument, Schema
from .routes import webmethod


class MemoryBank(Schema):
    uuid: str
    name: str


@runtime_checkable
class MemoryBanks(Protocol):
    @webmethod("POST", "/memory_banks/create")
    async def create_memory_bank(self, bank_uuid: str, bank_name: str, documents: list[MemoryBankDocument]) -> None:
        """Create a memory bank holding the given documents."""
        ...

    @webmethod("DELETE", "/memory_banks/drop")
    async def drop_memory_bank(self, bank_uuid: str) -> str:
        """Drop a memory bank and its documents; answers the dropped bank's uuid."""
        ...

    @webmethod("GET", "/memory_banks/get", response_format="jsonl")
    async def list_memory_banks(self) -> list[MemoryBank]:
        """List the memory banks."""
        ...

    @webmethod("POST", "/memory_bank/insert")
    async def insert_memory_documents(self, bank_uuid: str, documents: list[MemoryBankDocument]) -> None:
        """Add documents to a memory bank."""
        ...

    @webmethod("POST", "/memory_bank/update")
    async def update_memory_documents(self, bank_uuid: str, documents: list[MemoryBankDocument]) -> None:
        """Replace documents of a memory bank, matched by uuid."""
        ...

    @webmethod("POST", "/memory_bank/delete", response_format="jsonl")
    async def delete_memory_documents(self, bank_uuid: str, document_uuids: list[str]) -> list[str]:
        """Delete documents from a memory bank by uuid; answers the uuids deleted."""
        ...

    @webmethod("POST", "/memory_bank/get", response_format="jsonl")
    async def get_memory_documents(self, bank_uuid: str, document_uuids: list[str]) -> list[MemoryBankDocument]:
        """Fetch documents of a memory bank by uuid."""
        ...
