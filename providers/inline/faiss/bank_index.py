"""A memory bank's faiss index: in memory (flat or HNSW, adding, removing and searching vectors) and in its file.

The index
---------
Its ids are the chunks' rowids in the document store: ``IndexIDMap2(IndexFlatIP)`` (exact; vectors are unit
length, so inner product is cosine) or ``IndexIDMap2(IndexHNSWFlat)`` with the inner-product metric. HNSW
cannot remove vectors, so a removed chunk's id becomes a tombstone that searches exclude; once tombstones
exceed a share of the index, the owner rebuilds it (:meth:`BankIndex.rebuild`) from the vectors it stores.

The file
--------
``bank-<bank id>.index`` in the store's index folder: a prefix (magic, header length, CRC-32 of header and
index bytes), a JSON header, then faiss's serialized index. The header holds the highest chunk rowid the
index holds (the watermark: rowids are never reused, so every chunk above it is newer), the HNSW
tombstones, the generation of the save and how the index was built. A file that cannot be trusted as it is
(missing, corrupt, of another bank, shape or HNSW build, or older than the generation the owner expects)
raises :class:`StaleIndex`, and the owner rebuilds the index instead.

This module knows nothing of SQLite: the document store (``store.py``) says which vectors to add, remove or
rebuild from, which generation to expect, and records a save once :func:`write_index_file` returned.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

INDEX_MAGIC = b"LSFAISS1"
INDEX_FORMAT = 1
# magic, header length, CRC-32 of header + index bytes
_PREFIX = struct.Struct(f"<{len(INDEX_MAGIC)}sII")
# An HNSW bank is rebuilt once tombstones exceed this share of its index.
HNSW_REBUILD_SHARE = 0.2
# A filter matching at most this many chunks is searched exactly (cheap at this size, and HNSW loses recall
# when most of the graph is filtered out).
EXACT_SEARCH_LIMIT = 20_000

IndexKind = Literal["flat", "hnsw"]


class StaleIndex(Exception):
    """A bank's index file cannot be used as it is (or disagrees with the store); the index is rebuilt."""


@dataclass(frozen=True)
class HNSWSettings:
    """How HNSW indexes are built and searched (flat indexes ignore them)."""

    m: int = 32  # graph neighbours per vector
    ef_construction: int = 64  # candidates considered while inserting
    ef_search: int = 128  # candidates considered per query (at least k)

    @property
    def build(self) -> tuple[int, int]:
        """What a saved HNSW index must have been built with to be loaded: (M, efConstruction)."""
        return (self.m, self.ef_construction)


@dataclass
class IndexLoad:
    """How a bank's index was brought up at start: loaded from its file and caught up, or rebuilt."""

    bank_uuid: str
    source: Literal["file", "rebuilt"]
    reason: str | None  # why it was rebuilt
    vectors_from_file: int = 0
    vectors_added: int = 0  # chunks newer than the file (all of them on a rebuild)
    vectors_removed: int = 0  # chunks deleted since the file was saved


@dataclass
class BankIndex:
    bank_id: int
    uuid: str
    kind: IndexKind
    dimension: int
    index: Any  # faiss.IndexIDMap2
    watermark: int = 0  # the highest chunk rowid added
    tombstones: set[int] = field(default_factory=set)  # HNSW: deleted ids still in the graph
    generation: int = 0  # of the last save (the store's saved_generation)
    changes: int = 0  # vectors added or removed since the last save
    build: tuple[int, int] = (0, 0)  # HNSW (M, efConstruction) it was built with
    _excluded: Any = None  # cached selector excluding the tombstones

    @classmethod
    def empty(
        cls, bank_id: int, uuid: str, kind: IndexKind, dimension: int, hnsw: HNSWSettings, generation: int = 0
    ) -> BankIndex:
        return cls(
            bank_id, uuid, kind, dimension, new_index(kind, dimension, hnsw), generation=generation, build=hnsw.build
        )

    @property
    def live(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def tombstone_selector(self) -> Any:
        if not self.tombstones:
            return None
        if self._excluded is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64))
            # IDSelectorNot does not own the selector it negates: keep both alive together.
            self._excluded = (faiss.IDSelectorNot(batch), batch)
        return self._excluded[0]

    def forget_selector(self) -> None:
        self._excluded = None

    # ------------------------------------------------------------------------------------- vectors
    def add(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        """Add vectors under their chunk ids (``matrix``: one float32 row per id)."""
        if not len(ids):
            return
        self.index.add_with_ids(matrix, ids)
        self.watermark = max(self.watermark, int(ids.max()))

    def remove(self, ids: np.ndarray) -> int:
        """Remove (flat) or tombstone (HNSW) those of ``ids`` the index holds; how many it held."""
        if not len(ids):
            return 0
        if self.kind == "flat":
            return int(self.index.remove_ids(ids))
        held = ids[np.isin(ids, faiss.vector_to_array(self.index.id_map))]
        fresh = set(held.tolist()) - self.tombstones
        if fresh:
            self.tombstones |= fresh
            self.forget_selector()
        return len(fresh)

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], hnsw: HNSWSettings) -> int:
        """A fresh index from ``batches`` of (ids, vectors) in id order; how many vectors it holds."""
        self.index = new_index(self.kind, self.dimension, hnsw)
        self.tombstones = set()
        self.forget_selector()
        self.build = hnsw.build
        self.watermark = 0
        for ids, matrix in batches:
            self.add(ids, matrix)
        self.changes = max(self.changes, 1)  # the file no longer matches: save it at the next chance
        return int(self.index.ntotal)

    def too_many_tombstones(self, share: float) -> bool:
        """Whether an HNSW index holds more removed vectors than ``share`` of it (then it is worth rebuilding)."""
        return self.kind == "hnsw" and len(self.tombstones) > share * max(self.index.ntotal, 1)

    # -------------------------------------------------------------------------------------- search
    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None, *, hnsw: HNSWSettings, exact_limit: int
    ) -> tuple[list[int], list[float]]:
        """The ids and scores of the k best vectors for ``query`` (one row), among ``allowed`` ids if given."""
        if allowed is not None and len(allowed) <= exact_limit:
            return _exact_search(self.index, query, k, allowed)
        if self.kind == "flat":
            return self._flat_search(query, k, allowed)
        return self._hnsw_search(query, k, allowed, hnsw.ef_search)

    def _flat_search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[list[int], list[float]]:
        params = None
        if allowed is not None:
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(allowed)  # faiss keeps the selector alive with params
        scores, ids = self.index.search(query, k, params=params)
        return _found(ids[0], scores[0])

    def _hnsw_search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None, ef_search: int
    ) -> tuple[list[int], list[float]]:
        """Approximate search; the candidate list grows until k results turn up (filters, tombstones)."""
        if allowed is not None:
            keep = faiss.IDSelectorBatch(allowed)
            available = len(allowed)
        else:
            keep = self.tombstone_selector()
            available = self.live
        want = min(k, available)
        ef = max(ef_search, k)
        while True:
            # faiss's bundled stubs (1.15) omit SearchParametersHNSW, which the library has.
            params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
            if keep is not None:
                params.sel = keep
            scores, ids = self.index.search(query, k, params=params)
            found = _found(ids[0], scores[0])
            if len(found[0]) >= want or ef >= self.index.ntotal:
                break
            ef *= 4
        if len(found[0]) < want:  # the graph did not reach enough of the allowed vectors: search them all
            if allowed is None:
                everything = faiss.vector_to_array(self.index.id_map)
                allowed = everything[~np.isin(everything, np.fromiter(self.tombstones, dtype=np.int64))]
            return _exact_search(self.index, query, k, allowed)
        return found


def new_index(kind: str, dimension: int, hnsw: HNSWSettings) -> Any:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    graph = faiss.IndexHNSWFlat(dimension, hnsw.m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = hnsw.ef_construction
    # faiss's wrapper keeps `graph` alive as long as the IDMap.
    return faiss.IndexIDMap2(graph)


def _found(ids: np.ndarray, scores: np.ndarray) -> tuple[list[int], list[float]]:
    """faiss answers -1 for the places it could not fill."""
    keep = ids >= 0
    return ids[keep].tolist(), scores[keep].tolist()


def _exact_search(index: Any, query: np.ndarray, k: int, allowed: np.ndarray) -> tuple[list[int], list[float]]:
    """The k best of ``allowed`` by inner product, computed over their vectors (read back from the index)."""
    vectors = index.reconstruct_batch(allowed)
    scores = vectors @ query[0]
    top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return allowed[top].tolist(), scores[top].tolist()


# ------------------------------------------------------------------------------------------ index files
def index_file(index_dir: Path, bank_id: int) -> Path:
    return index_dir / f"bank-{bank_id}.index"


def remove_orphan_files(index_dir: Path, bank_ids: Iterable[int]) -> None:
    """Index files of banks not in ``bank_ids`` (a crash between a drop and the unlink) and unfinished saves."""
    known = {index_file(index_dir, bank_id).name for bank_id in bank_ids}
    for path in index_dir.iterdir():
        if path.name.endswith(".tmp") or (path.name.endswith(".index") and path.name not in known):
            path.unlink(missing_ok=True)


def write_index_file(state: BankIndex, path: Path, generation: int) -> None:
    """Write the index as ``generation`` atomically and durably (fsynced, renamed into place, folder fsynced)."""
    header = json.dumps(
        {
            "format": INDEX_FORMAT,
            "bank_id": state.bank_id,
            "kind": state.kind,
            "dimension": state.dimension,
            "build": list(state.build),
            "watermark": state.watermark,
            "generation": generation,
            "count": int(state.index.ntotal),
            "tombstones": sorted(state.tombstones),
        }
    ).encode()
    payload = faiss.serialize_index(state.index)
    checksum = zlib.crc32(payload.data, zlib.crc32(header))
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(_PREFIX.pack(INDEX_MAGIC, len(header), checksum))
        out.write(header)
        out.write(payload.data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def load_index_file(state: BankIndex, path: Path, hnsw: HNSWSettings) -> int:
    """Fill ``state`` from the bank's index file; how many live vectors it holds. Raises StaleIndex when the
    file cannot be used (``state.generation`` is the oldest generation accepted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StaleIndex(f"no index file {path.name}") from None
    except OSError as error:
        raise StaleIndex(f"index file {path.name} unreadable: {error}") from None
    if len(data) < _PREFIX.size:
        raise StaleIndex(f"index file {path.name} is truncated")
    magic, header_size, checksum = _PREFIX.unpack_from(data)
    body = memoryview(data)[_PREFIX.size :]
    if magic != INDEX_MAGIC or header_size > len(body) or zlib.crc32(body) != checksum:
        raise StaleIndex(f"index file {path.name} is corrupt (checksum mismatch)")
    header = json.loads(bytes(body[:header_size]))
    expected = {"format": INDEX_FORMAT, "bank_id": state.bank_id, "kind": state.kind, "dimension": state.dimension}
    for key, value in expected.items():
        if header.get(key) != value:
            raise StaleIndex(f"index file {path.name} has {key} {header.get(key)!r}, expected {value!r}")
    if state.kind == "hnsw" and tuple(header["build"]) != hnsw.build:
        raise StaleIndex(f"index file {path.name} was built with HNSW (M, efConstruction) {tuple(header['build'])}")
    # An older file may miss deletions the store forgot when a newer one was saved.
    if header["generation"] < state.generation:
        raise StaleIndex(f"index file {path.name} is generation {header['generation']}, expected {state.generation}")
    try:
        index = faiss.deserialize_index(np.frombuffer(body[header_size:], dtype=np.uint8))
    except RuntimeError as error:
        raise StaleIndex(f"index file {path.name} does not load: {error}") from None
    if not isinstance(index, faiss.IndexIDMap2) or index.ntotal != header["count"] or index.d != state.dimension:
        raise StaleIndex(f"index file {path.name} holds an unexpected index")
    state.index = index
    state.watermark = int(header["watermark"])
    state.tombstones = set(header["tombstones"])
    state.generation = int(header["generation"])
    state.build = tuple(header["build"])
    return int(index.ntotal) - len(state.tombstones)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
