"""The inline::faiss memory store: SQLite keeps everything, faiss searches vectors in memory.

What lives where
----------------
SQLite (WAL, ``synchronous=FULL``) is the source of truth: banks, documents (bytes, mime type, metadata
JSON), chunks (text, place in the document, the vector as float32 bytes) and, per bank, an FTS5 table over
the chunk texts for keyword search (BM25). Every write is one transaction committed before the method
returns, so an acknowledged write survives ``kill -9`` and a power cut. This module is that document store.

Each bank has a faiss index in memory whose ids are the chunks' rowids (``bank_index.py``: flat or HNSW,
and the index file). HNSW cannot remove vectors, so a deleted chunk's id becomes a tombstone that searches
exclude; once tombstones exceed a fifth of the index, the bank's index is rebuilt from SQLite.

Restarts without rebuilding
---------------------------
A bank's index is saved to ``<db>.faiss/bank-<id>.index`` (at close, after a rebuild, and after enough
changes) with a header: the highest chunk rowid it holds (the watermark; rowids are AUTOINCREMENT, never
reused, so every chunk above it is newer), the HNSW tombstones, and a generation. Deleting a chunk records
its rowid in ``deleted_chunks``. At start the file is loaded and caught up: chunks above the watermark are
added, chunks deleted since are removed (or tombstoned). A save bumps the bank's ``saved_generation`` in
SQLite and forgets the recorded deletions in the same transaction; a file older than that generation may
miss deletions that are no longer recorded, so it is not trusted. A missing, corrupt (checksum), stale or
inconsistent file (its live count differs from SQLite's) is rebuilt from SQLite, so a crash costs a
catch-up or a rebuild, never data.

Threads
-------
The SQLite connection and the faiss indexes belong to one worker thread; every method runs there, one at a
time, so the indexes always agree with the committed rows and the event loop never blocks. A lock file
keeps a second process (or store) from opening the same database, whose indexes would silently diverge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, ServiceUnavailableError
from llama_stack.providers.utils.memory.filters import Filter, matches
from llama_stack.providers.utils.memory.store import BankRecord, Hit, StoredDocument

from . import PROVIDER_TYPE
from .bank_index import (
    EXACT_SEARCH_LIMIT,
    HNSW_REBUILD_SHARE,
    BankIndex,
    HNSWSettings,
    IndexKind,
    IndexLoad,
    StaleIndex,
    index_file,
    load_index_file,
    remove_orphan_files,
    write_index_file,
)
from .config import FaissConfig

if sys.platform != "win32":  # POSIX; on Windows the database is not guarded against a second process.
    import fcntl

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
# Rowids are AUTOINCREMENT so a deleted chunk's id is never reused: the watermark of a saved index then
# tells newer chunks from older ones without ambiguity.
SCHEMA = """
CREATE TABLE IF NOT EXISTS banks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    embedding_model TEXT NOT NULL,
    embedding_dimension INTEGER NOT NULL,
    chunk_size_tokens INTEGER NOT NULL,
    overlap_tokens INTEGER NOT NULL,
    index_kind TEXT NOT NULL,
    hybrid INTEGER NOT NULL,
    rerank_model TEXT,
    saved_generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    bank_id INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    content BLOB NOT NULL,
    mime_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    UNIQUE (bank_id, uuid)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bank_id INTEGER NOT NULL,
    document_id INTEGER NOT NULL,
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (document_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS chunks_by_bank ON chunks (bank_id);
CREATE TABLE IF NOT EXISTS deleted_chunks (
    id INTEGER PRIMARY KEY,
    bank_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deleted_chunks_by_bank ON deleted_chunks (bank_id);
"""

# Rows per batch when streaming vectors out of SQLite.
_BATCH = 8192
_WORD = re.compile(r"\w+")


class FaissStore:
    """``MemoryStore`` over SQLite + faiss (see the module's docstring)."""

    def __init__(
        self,
        db_path: Path,
        *,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 64,
        hnsw_ef_search: int = 128,
        index_save_changes: int = 10_000,
        exact_search_limit: int = EXACT_SEARCH_LIMIT,
        hnsw_rebuild_share: float = HNSW_REBUILD_SHARE,
        provider: str = PROVIDER_TYPE,
    ):
        self.db_path = Path(db_path)
        self.index_dir = self.db_path.with_name(self.db_path.name + ".faiss")
        self.hnsw = HNSWSettings(hnsw_m, hnsw_ef_construction, hnsw_ef_search)
        self.index_save_changes = index_save_changes
        self.exact_search_limit = exact_search_limit
        self.hnsw_rebuild_share = hnsw_rebuild_share
        self.provider = provider
        # How each bank's index came up at the last start (by bank uuid); tests and operators read it.
        self.index_loads: dict[str, IndexLoad] = {}
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._banks: dict[str, BankIndex] = {}
        # bank uuid -> document rowid -> metadata, loaded at a bank's first filtered search.
        self._metadata_cache: dict[str, dict[int, dict[str, Any]]] = {}
        self._worker: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, config: FaissConfig, storage_dir: Path) -> FaissStore:
        return cls(
            config.db_path or Path(storage_dir) / "memory.sqlite",
            hnsw_m=config.hnsw_m,
            hnsw_ef_construction=config.hnsw_ef_construction,
            hnsw_ef_search=config.hnsw_ef_search,
            index_save_changes=config.index_save_changes,
        )

    # ----------------------------------------------------------------------------------------------
    # The MemoryStore protocol: each method hands its work to the worker thread.

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss-store")
        try:
            await self._run(self._start)
        except BaseException:
            await self._run(self._shutdown, False)
            self._worker.shutdown(wait=True)
            self._worker = None
            raise

    async def close(self) -> None:
        if self._worker is None:
            return
        try:
            await self._run(self._shutdown, True)
        finally:
            self._worker.shutdown(wait=True)
            self._worker = None

    async def create_bank(self, bank: BankRecord) -> None:
        await self._run(self._create_bank, bank)

    async def get_bank(self, bank_uuid: str, counts: bool = True) -> BankRecord | None:
        return await self._run(self._get_bank, bank_uuid, counts)

    async def list_banks(self, counts: bool = True) -> list[BankRecord]:
        return await self._run(self._list_banks, counts)

    async def drop_bank(self, bank_uuid: str) -> bool:
        return await self._run(self._drop_bank, bank_uuid)

    async def document_uuids(self, bank_uuid: str, uuids: list[str]) -> set[str]:
        return await self._run(self._document_uuids, bank_uuid, uuids)

    async def put_documents(self, bank_uuid: str, documents: list[StoredDocument]) -> None:
        await self._run(self._put_documents, bank_uuid, documents)

    async def delete_documents(self, bank_uuid: str, uuids: list[str]) -> list[str]:
        return await self._run(self._delete_documents, bank_uuid, uuids)

    async def get_documents(self, bank_uuid: str, uuids: list[str]) -> list[StoredDocument]:
        return await self._run(self._get_documents, bank_uuid, uuids)

    async def vector_search(self, bank_uuid: str, vector: list[float], k: int, filter_: Filter | None) -> list[Hit]:
        return await self._run(self._vector_search, bank_uuid, vector, k, filter_)

    async def keyword_search(self, bank_uuid: str, query: str, k: int, filter_: Filter | None) -> list[Hit]:
        return await self._run(self._keyword_search, bank_uuid, query, k, filter_)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._worker is None:
            raise ServiceUnavailableError("The faiss memory store is not started", provider=self.provider)
        return await asyncio.get_running_loop().run_in_executor(self._worker, partial(fn, *args))

    # ----------------------------------------------------------------------------------------------
    # Start and shutdown (worker thread).

    def _start(self) -> None:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.index_dir / "LOCK", self.db_path, self.provider)
        db = sqlite3.connect(self.db_path, isolation_level=None)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction is on disk (the WAL fsynced) before commit returns.
        db.execute("PRAGMA synchronous=FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ServiceUnavailableError(
                f"{self.db_path} has schema version {version}; this version of {self.provider} reads up to "
                f"{SCHEMA_VERSION}",
                provider=self.provider,
            )
        with self._transaction():
            for statement in _statements(SCHEMA):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._remove_orphan_files()
        self.index_loads.clear()
        for bank_id, uuid, kind, dimension, generation in db.execute(
            "SELECT id, uuid, index_kind, embedding_dimension, saved_generation FROM banks ORDER BY id"
        ).fetchall():
            state, load = self._bring_up(bank_id, uuid, kind, dimension, generation)
            self._banks[uuid] = state
            self.index_loads[uuid] = load

    def _shutdown(self, save: bool) -> None:
        try:
            if save and self._db is not None:
                for state in self._banks.values():
                    if state.changes or not self._index_file(state).exists():
                        self._save_quietly(state)
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            self._banks.clear()
            self._metadata_cache.clear()

    def _remove_orphan_files(self) -> None:
        """Index files of dropped banks (a crash between the drop and the unlink) and unfinished saves."""
        remove_orphan_files(self.index_dir, [row[0] for row in self._sql.execute("SELECT id FROM banks")])

    # ----------------------------------------------------------------------------------------------
    # Banks (worker thread).

    def _create_bank(self, bank: BankRecord) -> None:
        if bank.index not in ("flat", "hnsw"):
            raise BadRequestError(f"index: expected 'flat' or 'hnsw', got {bank.index!r}", param="index")
        if bank.embedding_dimension < 1:
            raise BadRequestError(
                f"embedding_dimension: expected a positive number, got {bank.embedding_dimension}",
                param="embedding_dimension",
            )
        try:
            with self._transaction():
                cursor = self._sql.execute(
                    "INSERT INTO banks (uuid, name, embedding_model, embedding_dimension, chunk_size_tokens, "
                    "overlap_tokens, index_kind, hybrid, rerank_model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        bank.uuid,
                        bank.name,
                        bank.embedding_model,
                        bank.embedding_dimension,
                        bank.chunk_size_tokens,
                        bank.overlap_tokens,
                        bank.index,
                        int(bank.hybrid),
                        bank.rerank_model,
                    ),
                )
                bank_id = _inserted_rowid(cursor)
                # Per bank, so BM25's document frequencies are the bank's own. External content: the text
                # is stored once, in chunks.
                self._sql.execute(
                    f"CREATE VIRTUAL TABLE {_fts(bank_id)} USING fts5(text, content='chunks', "
                    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')"
                )
        except sqlite3.IntegrityError:
            raise ConflictError(
                f"Memory bank {bank.uuid!r} already exists", param="bank_uuid", provider=self.provider
            ) from None
        self._banks[bank.uuid] = BankIndex.empty(bank_id, bank.uuid, bank.index, bank.embedding_dimension, self.hnsw)

    _BANK_SETTINGS = (
        "b.uuid, b.name, b.embedding_model, b.embedding_dimension, b.chunk_size_tokens, b.overlap_tokens, "
        "b.index_kind, b.hybrid, b.rerank_model"
    )
    # Counting scans the bank's rows: only when asked for.
    _BANK_COLUMNS = (
        f"{_BANK_SETTINGS}, "
        "(SELECT count(*) FROM documents WHERE bank_id = b.id), (SELECT count(*) FROM chunks WHERE bank_id = b.id)"
    )

    def _get_bank(self, bank_uuid: str, counts: bool = True) -> BankRecord | None:
        columns = self._BANK_COLUMNS if counts else f"{self._BANK_SETTINGS}, 0, 0"
        row = self._sql.execute(f"SELECT {columns} FROM banks b WHERE b.uuid = ?", (bank_uuid,)).fetchone()
        return BankRecord.from_row(row) if row else None

    def _list_banks(self, counts: bool = True) -> list[BankRecord]:
        columns = self._BANK_COLUMNS if counts else f"{self._BANK_SETTINGS}, 0, 0"
        return [BankRecord.from_row(row) for row in self._sql.execute(f"SELECT {columns} FROM banks b ORDER BY b.id")]

    def _drop_bank(self, bank_uuid: str) -> bool:
        state = self._banks.get(bank_uuid)
        if state is None:
            return False
        with self._transaction():
            self._sql.execute(f"DROP TABLE IF EXISTS {_fts(state.bank_id)}")
            for table in ("chunks", "documents", "deleted_chunks"):
                self._sql.execute(f"DELETE FROM {table} WHERE bank_id = ?", (state.bank_id,))
            self._sql.execute("DELETE FROM banks WHERE id = ?", (state.bank_id,))
        del self._banks[bank_uuid]
        self._metadata_cache.pop(bank_uuid, None)
        self.index_loads.pop(bank_uuid, None)
        # Left behind by a crash here, the file is an orphan removed at the next start.
        self._index_file(state).unlink(missing_ok=True)
        return True

    def _bank(self, bank_uuid: str) -> BankIndex:
        state = self._banks.get(bank_uuid)
        if state is None:
            names = ", ".join(repr(uuid) for uuid in list(self._banks)[:20]) or "none"
            raise NotFoundError(
                f"Memory bank {bank_uuid!r} not found (banks: {names})", param="bank_uuid", provider=self.provider
            )
        return state

    # ----------------------------------------------------------------------------------------------
    # Documents (worker thread).

    def _document_uuids(self, bank_uuid: str, uuids: list[str]) -> set[str]:
        state = self._bank(bank_uuid)
        rows = self._sql.execute(
            "SELECT uuid FROM documents WHERE bank_id = ? AND uuid IN (SELECT value FROM json_each(?))",
            (state.bank_id, json.dumps(uuids)),
        )
        return {row[0] for row in rows}

    def _put_documents(self, bank_uuid: str, documents: list[StoredDocument]) -> None:
        state = self._bank(bank_uuid)
        vectors = [self._document_vectors(state, i, document) for i, document in enumerate(documents)]
        # A uuid given twice: the last one wins, as if they had been put one after the other.
        last = {document.uuid: i for i, document in enumerate(documents)}
        chosen = [i for i, document in enumerate(documents) if last[document.uuid] == i]
        removed_chunks: list[int] = []
        removed_documents: list[int] = []
        added_ids: list[np.ndarray] = []
        added_metadata: dict[int, dict[str, Any]] = {}
        with self._transaction():
            for i in chosen:
                document = documents[i]
                old = self._sql.execute(
                    "SELECT id FROM documents WHERE bank_id = ? AND uuid = ?", (state.bank_id, document.uuid)
                ).fetchone()
                if old:
                    removed_chunks += self._delete_document_rows(state, [old[0]])
                    removed_documents.append(old[0])
                document_id, ids = self._insert_document(state, i, document, vectors[i])
                added_ids.append(ids)
                added_metadata[document_id] = document.metadata
        ids = np.concatenate(added_ids) if added_ids else np.empty(0, dtype=np.int64)
        matrix = np.vstack([vectors[i] for i in chosen]) if chosen else _no_vectors(state)
        self._apply(state, removed_chunks, ids, matrix)
        self._update_metadata(state, removed_documents, added_metadata)

    def _document_vectors(self, state: BankIndex, i: int, document: StoredDocument) -> np.ndarray:
        """The document's chunk vectors as one float32 matrix; a 400 naming the first bad one."""
        matrix = np.empty((len(document.chunks), state.dimension), dtype=np.float32)
        for j, chunk in enumerate(document.chunks):
            where = f"documents[{i}].chunks[{j}].vector"
            try:
                row = np.asarray(chunk.vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise BadRequestError(f"{where}: expected a list of numbers", param=where) from None
            if row.shape != (state.dimension,):
                raise BadRequestError(
                    f"{where}: expected {state.dimension} numbers (the bank's embedding dimension), got {row.size}",
                    param=where,
                )
            if not np.isfinite(row).all():
                raise BadRequestError(f"{where}: expected finite numbers", param=where)
            matrix[j] = row
        return matrix

    def _insert_document(
        self, state: BankIndex, i: int, document: StoredDocument, matrix: np.ndarray
    ) -> tuple[int, np.ndarray]:
        """Insert one document with its chunks (inside a transaction); its rowid and its chunks' rowids in order."""
        cursor = self._sql.execute(
            "INSERT INTO documents (bank_id, uuid, content, mime_type, metadata) VALUES (?, ?, ?, ?, ?)",
            (state.bank_id, document.uuid, document.content, document.mime_type, json.dumps(document.metadata)),
        )
        document_id = _inserted_rowid(cursor)
        try:
            self._sql.executemany(
                "INSERT INTO chunks (bank_id, document_id, chunk_index, text, vector) VALUES (?, ?, ?, ?, ?)",
                (
                    (state.bank_id, document_id, chunk.index, chunk.text, matrix[j].tobytes())
                    for j, chunk in enumerate(document.chunks)
                ),
            )
        except sqlite3.IntegrityError:
            where = f"documents[{i}].chunks"
            raise BadRequestError(f"{where}: two chunks have the same index", param=where) from None
        rowids = dict(
            self._sql.execute("SELECT chunk_index, id FROM chunks WHERE document_id = ?", (document_id,)).fetchall()
        )
        ids = np.array([rowids[chunk.index] for chunk in document.chunks], dtype=np.int64)
        self._sql.execute(
            f"INSERT INTO {_fts(state.bank_id)} (rowid, text) SELECT id, text FROM chunks WHERE document_id = ?",
            (document_id,),
        )
        return document_id, ids

    def _delete_document_rows(self, state: BankIndex, document_ids: list[int]) -> list[int]:
        """Delete documents with their chunks and keyword entries (inside a transaction); the chunk ids."""
        selected = "(SELECT value FROM json_each(?))"
        doc_ids = json.dumps(document_ids)
        chunk_ids = [
            row[0] for row in self._sql.execute(f"SELECT id FROM chunks WHERE document_id IN {selected}", (doc_ids,))
        ]
        fts = _fts(state.bank_id)
        # External-content FTS5 forgets a row when told its old text.
        self._sql.execute(
            f"INSERT INTO {fts} ({fts}, rowid, text) SELECT 'delete', id, text FROM chunks "
            f"WHERE document_id IN {selected}",
            (doc_ids,),
        )
        # Remembered so a saved index file can be caught up at the next start.
        self._sql.execute(
            f"INSERT OR IGNORE INTO deleted_chunks (id, bank_id) SELECT id, bank_id FROM chunks "
            f"WHERE document_id IN {selected}",
            (doc_ids,),
        )
        self._sql.execute(f"DELETE FROM chunks WHERE document_id IN {selected}", (doc_ids,))
        self._sql.execute(f"DELETE FROM documents WHERE id IN {selected}", (doc_ids,))
        return chunk_ids

    def _delete_documents(self, bank_uuid: str, uuids: list[str]) -> list[str]:
        state = self._bank(bank_uuid)
        wanted = list(dict.fromkeys(uuids))
        with self._transaction():
            rows = self._sql.execute(
                "SELECT uuid, id FROM documents WHERE bank_id = ? AND uuid IN (SELECT value FROM json_each(?))",
                (state.bank_id, json.dumps(wanted)),
            ).fetchall()
            found = dict(rows)
            removed = self._delete_document_rows(state, list(found.values())) if found else []
        self._apply(state, removed, np.empty(0, dtype=np.int64), _no_vectors(state))
        self._update_metadata(state, list(found.values()), {})
        return [uuid for uuid in wanted if uuid in found]

    def _get_documents(self, bank_uuid: str, uuids: list[str]) -> list[StoredDocument]:
        state = self._bank(bank_uuid)
        wanted = list(dict.fromkeys(uuids))
        rows = self._sql.execute(
            "SELECT uuid, content, mime_type, metadata FROM documents "
            "WHERE bank_id = ? AND uuid IN (SELECT value FROM json_each(?))",
            (state.bank_id, json.dumps(wanted)),
        )
        found = {
            uuid: StoredDocument(uuid=uuid, content=bytes(content), mime_type=mime, metadata=json.loads(metadata))
            for uuid, content, mime, metadata in rows
        }
        return [found[uuid] for uuid in wanted if uuid in found]

    # ----------------------------------------------------------------------------------------------
    # Keeping the in-memory index in step with committed rows (worker thread).

    def _apply(self, state: BankIndex, removed: list[int], ids: np.ndarray, matrix: np.ndarray) -> None:
        """Mirror a committed write in the bank's index; rebuild from SQLite if that fails midway."""
        try:
            state.remove(np.asarray(removed, dtype=np.int64))
            state.add(ids, matrix)
            state.changes += len(removed) + len(ids)
        except Exception:  # the rows are committed: SQLite is the truth the index is rebuilt from
            logger.exception("memory bank %r: updating the index failed; rebuilding it from SQLite", state.uuid)
            self._rebuild(state)
        if state.too_many_tombstones(self.hnsw_rebuild_share):
            logger.info(
                "memory bank %r: %d of %d HNSW vectors are deleted; rebuilding the index",
                state.uuid,
                len(state.tombstones),
                state.index.ntotal,
            )
            self._rebuild(state)
            self._save_quietly(state)
        elif state.changes >= max(self.index_save_changes, state.index.ntotal // 10):
            self._save_quietly(state)

    def _save_quietly(self, state: BankIndex) -> None:
        """Save the index, logging a failure: the write it follows is committed, and a missing or stale
        file only costs a catch-up or a rebuild at the next start."""
        try:
            self._save_index(state)
        except Exception:
            logger.exception("memory bank %r: saving its index to %s failed", state.uuid, self._index_file(state))

    def _update_metadata(self, state: BankIndex, removed: list[int], added: dict[int, dict[str, Any]]) -> None:
        """Keep the filter cache (when loaded) in step with committed documents."""
        cached = self._metadata_cache.get(state.uuid)
        if cached is None:
            return
        for document_id in removed:
            cached.pop(document_id, None)
        cached.update(added)

    def _rebuild(self, state: BankIndex) -> int:
        """A fresh index from the bank's chunks in SQLite; how many vectors it holds."""
        return state.rebuild(self._stored_vectors(state, after=0), self.hnsw)

    def _stored_vectors(self, state: BankIndex, after: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The bank's chunk ids and vectors above rowid ``after``, in batches, in rowid order."""
        last = after
        while True:
            rows = self._sql.execute(
                "SELECT id, vector FROM chunks WHERE bank_id = ? AND id > ? ORDER BY id LIMIT ?",
                (state.bank_id, last, _BATCH),
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(
                len(rows), state.dimension
            )
            yield ids, matrix
            last = int(ids[-1])

    # ----------------------------------------------------------------------------------------------
    # Index files (worker thread).

    def _index_file(self, state: BankIndex) -> Path:
        return index_file(self.index_dir, state.bank_id)

    def _save_index(self, state: BankIndex) -> None:
        """Write the index file, then record its generation and forget the deletions it reflects."""
        generation = state.generation + 1
        path = self._index_file(state)
        write_index_file(state, path, generation)
        # Only once the file is durable may SQLite forget the deletions it reflects.
        with self._transaction():
            self._sql.execute("UPDATE banks SET saved_generation = ? WHERE id = ?", (generation, state.bank_id))
            self._sql.execute("DELETE FROM deleted_chunks WHERE bank_id = ?", (state.bank_id,))
        state.generation = generation
        state.changes = 0
        logger.debug("memory bank %r: index saved to %s (%d vectors)", state.uuid, path, state.index.ntotal)

    def _bring_up(
        self, bank_id: int, uuid: str, kind: IndexKind, dimension: int, generation: int
    ) -> tuple[BankIndex, IndexLoad]:
        state = BankIndex(bank_id, uuid, kind, dimension, None, generation=generation)
        path = self._index_file(state)
        try:
            from_file = load_index_file(state, path, self.hnsw)
            removed, added = self._catch_up(state)
            load = IndexLoad(uuid, "file", None, from_file, added, removed)
            logger.info(
                "memory bank %r: index loaded from %s (%d vectors); %d newer chunks added, %d deleted chunks removed",
                uuid,
                path,
                from_file,
                added,
                removed,
            )
        except StaleIndex as stale:
            added = self._rebuild(state)
            load = IndexLoad(uuid, "rebuilt", str(stale), 0, added, 0)
            logger.info("memory bank %r: index rebuilt from SQLite (%d vectors): %s", uuid, added, stale)
        return state, load

    def _catch_up(self, state: BankIndex) -> tuple[int, int]:
        """Apply what changed in SQLite since the file was saved; (removed, added)."""
        deleted = np.fromiter(
            (
                row[0]
                for row in self._sql.execute(
                    "SELECT id FROM deleted_chunks WHERE bank_id = ? AND id <= ?", (state.bank_id, state.watermark)
                )
            ),
            dtype=np.int64,
        )
        removed = state.remove(deleted)
        added = 0
        for ids, matrix in self._stored_vectors(state, after=state.watermark):
            state.add(ids, matrix)
            added += len(ids)
        stored = self._sql.execute("SELECT count(*) FROM chunks WHERE bank_id = ?", (state.bank_id,)).fetchone()[0]
        if state.live != stored:
            raise StaleIndex(f"index holds {state.live} live vectors after catching up, SQLite {stored} chunks")
        state.changes = removed + added
        return removed, added

    # ----------------------------------------------------------------------------------------------
    # Search (worker thread).

    def _vector_search(self, bank_uuid: str, vector: list[float], k: int, filter_: Filter | None) -> list[Hit]:
        state = self._bank(bank_uuid)
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != state.dimension:
            raise BadRequestError(
                f"vector: expected {state.dimension} numbers (the bank's embedding dimension), got {query.shape[1]}",
                param="vector",
            )
        if k < 1:
            raise BadRequestError(f"k: expected at least 1, got {k}", param="k")
        if state.live == 0:
            return []
        allowed = None if filter_ is None else self._matching_chunk_ids(state, filter_)
        if allowed is not None and not len(allowed):
            return []
        ids, scores = state.search(query, k, allowed, hnsw=self.hnsw, exact_limit=self.exact_search_limit)
        return self._hits(ids, scores)

    def _matching_chunk_ids(self, state: BankIndex, filter_: Filter) -> np.ndarray | None:
        """Ids of the chunks whose document matches; None when every document does (no filtering needed)."""
        chosen = self._matching_document_ids(state, filter_)
        if chosen is None:
            return None
        rows = self._sql.execute(
            "SELECT id FROM chunks WHERE document_id IN (SELECT value FROM json_each(?))", (json.dumps(chosen),)
        )
        return np.fromiter((row[0] for row in rows), dtype=np.int64)

    def _matching_document_ids(self, state: BankIndex, filter_: Filter) -> list[int] | None:
        """Rowids of the documents whose metadata matches (``matches()`` is the reference semantics, so it is
        the implementation too); None when all do."""
        documents = self._metadata(state)
        chosen = [document_id for document_id, metadata in documents.items() if matches(filter_, metadata)]
        return None if len(chosen) == len(documents) else chosen

    def _metadata(self, state: BankIndex) -> dict[int, dict[str, Any]]:
        cached = self._metadata_cache.get(state.uuid)
        if cached is None:
            cached = self._metadata_cache[state.uuid] = {
                document_id: json.loads(metadata)
                for document_id, metadata in self._sql.execute(
                    "SELECT id, metadata FROM documents WHERE bank_id = ?", (state.bank_id,)
                )
            }
        return cached

    def _hits(self, ids: list[int], scores: list[float]) -> list[Hit]:
        if not ids:
            return []
        rows = self._sql.execute(
            "SELECT c.id, c.chunk_index, c.text, d.uuid, d.metadata FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE c.id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
        by_id = {row[0]: row for row in rows}
        hits = []
        for chunk_id, score in zip(ids, scores, strict=True):
            row = by_id.get(chunk_id)
            if row is None:  # the index and SQLite disagree: a bug, but the answer stays truthful
                logger.warning("chunk %d is in a faiss index but not in SQLite", chunk_id)
                continue
            hits.append(Hit(row[3], row[1], row[2], float(score), json.loads(row[4])))
        return hits

    def _keyword_search(self, bank_uuid: str, query: str, k: int, filter_: Filter | None) -> list[Hit]:
        state = self._bank(bank_uuid)
        if k < 1:
            raise BadRequestError(f"k: expected at least 1, got {k}", param="k")
        words = list(dict.fromkeys(word.lower() for word in _WORD.findall(query)))
        if not words:
            return []
        # Each word quoted (FTS5 syntax in the query is taken literally) and any of them may match: BM25
        # ranks chunks matching more, and rarer, words first.
        match = " OR ".join('"' + word.replace('"', '""') + '"' for word in words)
        fts = _fts(state.bank_id)
        sql = (
            f"SELECT c.chunk_index, c.text, d.uuid, d.metadata, -{fts}.rank FROM {fts} "
            f"JOIN chunks c ON c.id = {fts}.rowid JOIN documents d ON d.id = c.document_id WHERE {fts} MATCH ?"
        )
        params: list[Any] = [match]
        if filter_ is not None:
            chosen = self._matching_document_ids(state, filter_)
            if chosen is not None:
                if not chosen:
                    return []
                sql += " AND c.document_id IN (SELECT value FROM json_each(?))"
                params.append(json.dumps(chosen))
        sql += f" ORDER BY {fts}.rank LIMIT ?"
        params.append(k)
        return [
            Hit(uuid, chunk_index, text, float(score), json.loads(metadata))
            for chunk_index, text, uuid, metadata, score in self._sql.execute(sql, params)
        ]

    # ----------------------------------------------------------------------------------------------
    # SQLite helpers (worker thread).

    @property
    def _sql(self) -> sqlite3.Connection:
        if self._db is None:
            raise ServiceUnavailableError("The faiss memory store is closed", provider=self.provider)
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed (fsynced, synchronous=FULL) on success, rolled back otherwise."""
        self._sql.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._sql.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                self._sql.execute("ROLLBACK")
            raise
        self._sql.execute("COMMIT")


def _fts(bank_id: int) -> str:
    return f"chunks_fts_{int(bank_id)}"


def _statements(script: str) -> Iterable[str]:
    return (statement.strip() for statement in script.split(";") if statement.strip())


def _inserted_rowid(cursor: sqlite3.Cursor) -> int:
    """The rowid of the row the cursor's INSERT added (sqlite3 has None only for a cursor that inserted nothing)."""
    rowid = cursor.lastrowid
    if rowid is None:
        raise RuntimeError("sqlite3 reported no rowid for an INSERT")
    return rowid


def _no_vectors(state: BankIndex) -> np.ndarray:
    return np.empty((0, state.dimension), dtype=np.float32)


def _lock(path: Path, db_path: Path, provider: str) -> int | None:
    """Hold an exclusive lock on ``path`` for as long as the store is open (released if the process dies)."""
    if sys.platform == "win32":
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ServiceUnavailableError(
            f"The memory-bank database {db_path} is open in another store (another server or process); "
            "close that one first",
            provider=provider,
        ) from None
    return fd
