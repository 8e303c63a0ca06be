"""The PostgreSQL + pgvector store of memory banks (``remote::pgvector``), for servers that share state.

Tables (``<p>`` is the configured ``table_prefix``)
---------------------------------------------------
``<p>banks``
    One row per bank: its settings, the text search configuration its keyword search uses, and ``id``, a
    number from a sequence that names the bank's chunk table.
``<p>documents``
    The documents of every bank: original bytes (``bytea``), mime type, metadata (``jsonb``) and how many
    chunks they have (so counting a bank's chunks reads its documents, not its vectors). Unique per
    ``(bank_id, uuid)``; deleting a bank's row deletes its documents (``ON DELETE CASCADE``).
``<p>chunks_<bank id>``
    One table per bank, because a bank's embedding dimension is fixed but banks differ: the column is a
    typed ``vector(dimension)``, which an HNSW index needs. Each row has the chunk's text, its vector and
    a ``tsvector`` generated from the text (GIN-indexed) for keyword search; deleting a document deletes
    its chunks (``ON DELETE CASCADE``). ``index: hnsw`` banks get an HNSW index (``vector_ip_ops``);
    ``flat`` banks are searched by an exact scan.

Every write runs in one transaction that is committed before the method returns, so an acknowledged
write survives anything that happens to this process. Nothing is cached between calls (not even a bank's
id): another server may drop a bank and create one with the same uuid at any time.

Several servers may start against one database at once: the schema is created with ``IF NOT EXISTS``
under a transaction-scoped advisory lock, so the second waits for the first and then finds everything.

Searches score by inner product on unit vectors (pgvector's ``<#>`` is its negative), i.e. cosine
similarity. Metadata filters are compiled to SQL over the ``jsonb`` column with exactly the semantics of
:func:`~llama_stack.providers.utils.memory.filters.matches`; keys and values are bound parameters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import Format, TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.providers.utils.memory.filters import All, Any_, Compare, Filter
from llama_stack.providers.utils.memory.store import BankRecord, Hit, StoredDocument
from llama_stack.providers.utils.remote.redaction import Redactor

from .config import PGVectorConfig

logger = logging.getLogger(__name__)

PROVIDER_TYPE = "remote::pgvector"

# One key for every llama-stack schema in a database: CREATE EXTENSION is database-wide, and concurrent
# CREATE ... IF NOT EXISTS statements can still collide on the catalogs' unique indexes.
_SCHEMA_LOCK_KEY = 0x6C6C_6D73_7067_7663  # "llmspgvc"
# pgvector 0.6: HNSW indexes take vectors of at most 2000 dimensions; hnsw.ef_search is at most 1000.
_HNSW_MAX_DIMENSION = 2000
_MAX_EF_SEARCH = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class _Vector:
    """A vector bound as a query parameter: sent in pgvector's binary format (exact float4, no text round trip)."""

    values: Sequence[float]


def _vector_bytes(values: Sequence[float]) -> bytes:
    # pgvector's vector_recv: int16 dimension, int16 unused, then float4s, all in network byte order.
    return struct.pack(f">HH{len(values)}f", len(values), 0, *values)


class _VectorDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> Buffer:
        return _vector_bytes(obj.values if isinstance(obj, _Vector) else obj)


@dataclass(frozen=True)
class _Bank:
    """A bank's row as one transaction sees it."""

    id: int
    uuid: str
    dimension: int
    index: str
    text_search_config: str

    @property
    def table(self) -> str:
        return f"chunks_{self.id}"


class PGVectorStore:
    """A :class:`~llama_stack.providers.utils.memory.store.MemoryStore` on PostgreSQL with pgvector."""

    def __init__(self, config: PGVectorConfig, provider_id: str = "pgvector"):
        self.config = config
        self.provider_id = provider_id
        self._prefix = config.table_prefix
        self._conninfo = _conninfo(config)
        self._where = _describe_server(config)
        self._vector_oid: int | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(config.pool_size)
        self._closed = False

    # -- naming ------------------------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return f"provider '{self.provider_id}' ({PROVIDER_TYPE})"

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self._prefix + name)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._closed = False
        conn = await self._connect(register_vector=False)
        try:
            await self._create_schema(conn)
            vector_type = await (await conn.execute("SELECT 'vector'::regtype::oid")).fetchone()
            if vector_type is None:  # one expression selected is one row; psycopg's types cannot know that
                raise RuntimeError("SELECT 'vector'::regtype::oid answered no row")
            self._vector_oid = vector_type[0]
            self._register_vector(conn)
        except BaseException:
            await conn.close()
            raise
        self._idle.append(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def _create_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except (pg_errors.InsufficientPrivilege, pg_errors.UndefinedFile, pg_errors.FeatureNotSupported) as exc:
            raise ProviderError(
                f"{self._name}: the PostgreSQL server at {self._where} cannot provide the pgvector extension "
                f"({self._scrub(_first_line(exc))}). Install pgvector on that server "
                "(https://github.com/pgvector/pgvector) and have a superuser run CREATE EXTENSION vector in the "
                "database, or connect as a user who may.",
                provider=self.provider_id,
                code="pgvector_unavailable",
            ) from exc
        except psycopg.Error as exc:
            raise self._translate(exc, conn) from exc
        try:
            await conn.execute("SELECT %s::regconfig", (self.config.text_search_config,))
        except pg_errors.UndefinedObject as exc:
            cur = await conn.execute("SELECT cfgname FROM pg_ts_config ORDER BY cfgname")
            known = ", ".join(row[0] for row in await cur.fetchall())
            raise ProviderError(
                f"{self._name}: text_search_config {self.config.text_search_config!r} is not a text search "
                f"configuration of the PostgreSQL server at {self._where}; it has: {known}",
                provider=self.provider_id,
                param="text_search_config",
            ) from exc
        statements = [
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {banks} (
                    id bigserial PRIMARY KEY,
                    uuid text NOT NULL UNIQUE,
                    name text NOT NULL,
                    embedding_model text NOT NULL,
                    embedding_dimension integer NOT NULL CHECK (embedding_dimension > 0),
                    chunk_size_tokens integer NOT NULL,
                    overlap_tokens integer NOT NULL,
                    index text NOT NULL CHECK (index IN ('flat', 'hnsw')),
                    hybrid boolean NOT NULL,
                    rerank_model text,
                    text_search_config text NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now()
                )"""
            ).format(banks=self._t("banks")),
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {documents} (
                    id bigserial PRIMARY KEY,
                    bank_id bigint NOT NULL REFERENCES {banks} (id) ON DELETE CASCADE,
                    uuid text NOT NULL,
                    content bytea NOT NULL,
                    mime_type text NOT NULL,
                    metadata jsonb NOT NULL,
                    chunk_count integer NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    UNIQUE (bank_id, uuid)
                )"""
            ).format(documents=self._t("documents"), banks=self._t("banks")),
        ]
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                for statement in statements:
                    await conn.execute(statement)
        except psycopg.Error as exc:
            raise self._translate(exc, conn) from exc

    # -- connections -------------------------------------------------------------------------------

    async def _connect(self, register_vector: bool = True) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,  # transactions are explicit (conn.transaction()), never left open by a read
                connect_timeout=self.config.connect_timeout_s,
                # Names the provider in pg_stat_activity, for whoever looks after the database.
                application_name=f"llama-stack {self.provider_id}"[:63],
                row_factory=tuple_row,
            )
        except psycopg.OperationalError as exc:
            raise ServiceUnavailableError(
                f"{self._name}: cannot connect to PostgreSQL at {self._where}: {self._scrub(_first_line(exc))}",
                provider=self.provider_id,
                code="database_unreachable",
            ) from exc
        if register_vector:
            self._register_vector(conn)
        return conn

    def _register_vector(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # The type's oid differs per database (the extension creates it), hence a dumper class per store.
        dumper = type("VectorDumper", (_VectorDumper,), {"oid": self._vector_oid})
        conn.adapters.register_dumper(_Vector, dumper)

    def _require_started(self) -> int:
        """pgvector's type oid in this database; a 503 when the store is not started, or closed."""
        if self._closed or self._vector_oid is None:
            raise ServiceUnavailableError(f"{self._name}: the store is not started", provider=self.provider_id)
        return self._vector_oid

    @asynccontextmanager
    async def _connection(self, fresh: bool = False) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], bool]]:
        """A pooled connection (a new one when ``fresh``) and whether it was reused: it may have died idle."""
        self._require_started()
        async with self._slots:
            if self._idle and not fresh:
                conn, reused = self._idle.pop(), True
            else:
                conn, reused = await self._connect(), False
            try:
                yield conn, reused
            finally:
                # A connection that broke, or was left mid-transaction by a cancelled call, is not reused.
                healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
                if healthy and not self._closed:
                    self._idle.append(conn)
                else:
                    await conn.close()

    async def _transaction(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], bank_uuid: str | None = None
    ) -> T:
        """Run ``work`` in one transaction, committed before returning; database failures become API errors.

        Running ``work`` again is safe whenever COMMIT was not sent (the server rolls back what it did), so
        a transaction is retried once when its pooled connection turns out dead (the server restarted
        while the connection sat idle) and up to twice when PostgreSQL broke a deadlock by aborting it.
        """
        attempts, fresh = 3, False
        for attempt in range(1, attempts + 1):
            # After a dead connection, a new one: the others in the pool likely died with it.
            async with self._connection(fresh) as (conn, reused):
                committing = False
                try:
                    async with conn.transaction():
                        result = await work(conn)
                        committing = True  # leaving the block sends COMMIT
                    return result
                except LlamaStackError:
                    raise
                except pg_errors.UndefinedTable as exc:
                    # The bank's chunk table went away between reading its row and using it: dropped meanwhile.
                    if bank_uuid is not None:
                        raise self._no_bank(bank_uuid) from exc
                    raise self._translate(exc, conn) from exc
                except psycopg.Error as exc:
                    lost = conn.broken or conn.closed
                    if not committing and attempt < attempts:
                        if lost and reused and attempt == 1:
                            logger.info("%s: a pooled connection was dead (%s); reconnecting", self._name, exc)
                            fresh = True
                            continue
                        if isinstance(exc, pg_errors.TransactionRollback) and not lost:
                            logger.info("%s: transaction aborted (%s); running it again", self._name, exc)
                            continue
                    raise self._translate(exc, conn, committing=committing) from exc
        raise AssertionError("unreachable")

    def _translate(
        self, exc: psycopg.Error, conn: psycopg.AsyncConnection[Any], committing: bool = False
    ) -> LlamaStackError:
        message = self._scrub(_first_line(exc)).rstrip(".")
        if conn.broken or conn.closed:
            outcome = " It was lost while committing: what it wrote may or may not be stored." if committing else ""
            return ServiceUnavailableError(
                f"{self._name}: lost the connection to PostgreSQL at {self._where}: {message}.{outcome}",
                provider=self.provider_id,
                code="database_unreachable",
            )
        return ProviderError(f"{self._name}: PostgreSQL at {self._where} failed: {message}", provider=self.provider_id)

    def _scrub(self, text: str) -> str:
        # libpq does not echo passwords, but a message that quotes the connection string would: the config's
        # secrets and the password inside the dsn go, as every remote provider's do.
        password = conninfo_to_dict(self._conninfo).get("password")
        return Redactor(self.config).error_text(text, [str(password)] if password else [])

    def _no_bank(self, bank_uuid: str) -> NotFoundError:
        return NotFoundError(f"memory bank {bank_uuid!r} not found", param="bank_uuid", provider=self.provider_id)

    # -- banks -------------------------------------------------------------------------------------

    async def _bank(self, conn: psycopg.AsyncConnection[Any], bank_uuid: str, lock: str | None = None) -> _Bank:
        """The bank's row; ``lock``: 'SHARE' keeps it from being dropped until the transaction ends."""
        if "\x00" in bank_uuid:
            raise self._no_bank(bank_uuid)
        query = sql.SQL(
            "SELECT id, uuid, embedding_dimension, index, text_search_config FROM {banks} WHERE uuid = %s {lock}"
        ).format(banks=self._t("banks"), lock=sql.SQL(f"FOR {lock}" if lock else ""))
        row = await (await conn.execute(query, (bank_uuid,))).fetchone()
        if row is None:
            raise self._no_bank(bank_uuid)
        return _Bank(*row)

    async def create_bank(self, bank: BankRecord) -> None:
        _check_text(bank.uuid, "bank_uuid")
        _check_text(bank.name, "bank_name")
        if bank.index == "hnsw" and bank.embedding_dimension > _HNSW_MAX_DIMENSION:
            raise NotSupportedError(
                f"{self._name}: pgvector's HNSW index takes vectors of up to {_HNSW_MAX_DIMENSION} dimensions; "
                f"{bank.embedding_model!r} makes {bank.embedding_dimension}. Use index 'flat' for this bank.",
                provider=self.provider_id,
                param="config.index",
            )

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            insert = sql.SQL(
                """INSERT INTO {banks} (uuid, name, embedding_model, embedding_dimension, chunk_size_tokens,
                       overlap_tokens, index, hybrid, rerank_model, text_search_config)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (uuid) DO NOTHING RETURNING id"""
            ).format(banks=self._t("banks"))
            params = (
                bank.uuid,
                bank.name,
                bank.embedding_model,
                bank.embedding_dimension,
                bank.chunk_size_tokens,
                bank.overlap_tokens,
                bank.index,
                bank.hybrid,
                bank.rerank_model,
                self.config.text_search_config,
            )
            row = await (await conn.execute(insert, params)).fetchone()
            if row is None:
                raise ConflictError(
                    f"memory bank {bank.uuid!r} already exists", param="bank_uuid", provider=self.provider_id
                )
            await self._create_chunk_table(
                conn, _Bank(row[0], bank.uuid, bank.embedding_dimension, bank.index, self.config.text_search_config)
            )

        await self._transaction(work)

    async def _create_chunk_table(self, conn: psycopg.AsyncConnection[Any], bank: _Bank) -> None:
        table = self._t(bank.table)
        await conn.execute(
            sql.SQL(
                """CREATE TABLE {table} (
                    document_id bigint NOT NULL REFERENCES {documents} (id) ON DELETE CASCADE,
                    chunk_index integer NOT NULL,
                    text text NOT NULL,
                    embedding vector({dimension}) NOT NULL,
                    tsv tsvector GENERATED ALWAYS AS (to_tsvector({ts_config}::regconfig, text)) STORED,
                    PRIMARY KEY (document_id, chunk_index)
                )"""
            ).format(
                table=table,
                documents=self._t("documents"),
                dimension=sql.Literal(bank.dimension),
                ts_config=sql.Literal(bank.text_search_config),
            )
        )
        await conn.execute(
            sql.SQL("CREATE INDEX {name} ON {table} USING gin (tsv)").format(
                name=self._t(f"{bank.table}_tsv"), table=table
            )
        )
        if bank.index == "hnsw":
            await conn.execute(
                sql.SQL(
                    "CREATE INDEX {name} ON {table} USING hnsw (embedding vector_ip_ops) "
                    "WITH (m = {m}, ef_construction = {ef})"
                ).format(
                    name=self._t(f"{bank.table}_hnsw"),
                    table=table,
                    m=sql.Literal(self.config.hnsw_m),
                    ef=sql.Literal(self.config.hnsw_ef_construction),
                )
            )

    _BANK_SETTINGS = """b.uuid, b.name, b.embedding_model, b.embedding_dimension, b.chunk_size_tokens,
        b.overlap_tokens, b.index, b.hybrid, b.rerank_model"""

    async def get_bank(self, bank_uuid: str, counts: bool = True) -> BankRecord | None:
        if "\x00" in bank_uuid:
            return None
        banks = await self._bank_records(sql.SQL("WHERE b.uuid = %s"), (bank_uuid,), counts)
        return banks[0] if banks else None

    async def list_banks(self, counts: bool = True) -> list[BankRecord]:
        return await self._bank_records(sql.SQL(""), (), counts)

    async def _bank_records(
        self, where: sql.Composable, params: Sequence[Any], counts: bool = True
    ) -> list[BankRecord]:
        if counts:  # reads every document row of the banks: only when asked for
            template = sql.SQL(
                "SELECT {settings}, count(d.id), coalesce(sum(d.chunk_count), 0) "
                "FROM {banks} b LEFT JOIN {documents} d ON d.bank_id = b.id {where} GROUP BY b.id ORDER BY b.id"
            )
        else:
            template = sql.SQL("SELECT {settings}, 0, 0 FROM {banks} b {where} ORDER BY b.id")
        query = template.format(
            settings=sql.SQL(self._BANK_SETTINGS), banks=self._t("banks"), documents=self._t("documents"), where=where
        )

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[BankRecord]:
            rows = await (await conn.execute(query, params)).fetchall()
            return [BankRecord.from_row(row) for row in rows]

        return await self._transaction(work)

    async def drop_bank(self, bank_uuid: str) -> bool:
        async def work(conn: psycopg.AsyncConnection[Any]) -> bool:
            try:
                # FOR UPDATE waits for writers holding the row FOR SHARE, and blocks new ones until commit.
                bank = await self._bank(conn, bank_uuid, lock="UPDATE")
            except NotFoundError:
                return False
            # Dropping the table is one catalog change; cascading row by row from documents would not be.
            await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._t(bank.table)))
            await conn.execute(sql.SQL("DELETE FROM {banks} WHERE id = %s").format(banks=self._t("banks")), (bank.id,))
            return True

        return await self._transaction(work)

    # -- documents ---------------------------------------------------------------------------------

    async def document_uuids(self, bank_uuid: str, uuids: list[str]) -> set[str]:
        wanted = [u for u in uuids if "\x00" not in u]

        async def work(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            bank = await self._bank(conn, bank_uuid)
            query = sql.SQL("SELECT uuid FROM {documents} WHERE bank_id = %s AND uuid = ANY(%s)").format(
                documents=self._t("documents")
            )
            return {row[0] for row in await (await conn.execute(query, (bank.id, wanted))).fetchall()}

        return await self._transaction(work, bank_uuid)

    async def put_documents(self, bank_uuid: str, documents: list[StoredDocument]) -> None:
        if not documents:
            return
        _check_documents(documents)

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            bank = await self._bank(conn, bank_uuid, lock="SHARE")
            for document in documents:
                for chunk in document.chunks:
                    if len(chunk.vector) != bank.dimension:
                        raise BadRequestError(
                            f"document {document.uuid!r}, chunk {chunk.index}: a vector of {len(chunk.vector)} "
                            f"dimensions; bank {bank_uuid!r} stores {bank.dimension}",
                            param="documents",
                            provider=self.provider_id,
                        )
            # An upsert keeps the row (and its id) of a replaced document: two servers replacing the same
            # document at once then serialise on that row instead of one failing on the unique key.
            upsert = sql.SQL(
                """INSERT INTO {documents} (bank_id, uuid, content, mime_type, metadata, chunk_count)
                   SELECT %s, u, c, m, md, n
                   FROM unnest(%s::text[], %s::bytea[], %s::text[], %s::jsonb[], %s::integer[]) AS t(u, c, m, md, n)
                   ON CONFLICT (bank_id, uuid) DO UPDATE SET content = EXCLUDED.content,
                       mime_type = EXCLUDED.mime_type, metadata = EXCLUDED.metadata,
                       chunk_count = EXCLUDED.chunk_count, updated_at = now()
                   RETURNING uuid, id"""
            ).format(documents=self._t("documents"))
            # Rows locked in one order (by uuid) by every writer: concurrent batches cannot deadlock.
            documents_ = sorted(documents, key=lambda d: d.uuid)
            params = (
                bank.id,
                [d.uuid for d in documents_],
                [bytes(d.content) for d in documents_],
                [d.mime_type for d in documents_],
                [Jsonb(d.metadata) for d in documents_],
                [len(d.chunks) for d in documents_],
            )
            ids = dict(await (await conn.execute(upsert, params)).fetchall())
            table = self._t(bank.table)
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE document_id = ANY(%s)").format(table), (list(ids.values()),)
            )
            copy_rows = sql.SQL("COPY {} (document_id, chunk_index, text, embedding) FROM STDIN (FORMAT BINARY)")
            async with conn.cursor() as cur, cur.copy(copy_rows.format(table)) as copy:
                copy.set_types(["int8", "int4", "text", self._require_started()])
                for document in documents:
                    for chunk in document.chunks:
                        # PostgreSQL text holds no NUL characters; they carry nothing for retrieval.
                        text = chunk.text.replace("\x00", "")
                        await copy.write_row((ids[document.uuid], chunk.index, text, chunk.vector))

        await self._transaction(work, bank_uuid)

    async def delete_documents(self, bank_uuid: str, uuids: list[str]) -> list[str]:
        wanted = [u for u in uuids if "\x00" not in u]

        async def work(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            bank = await self._bank(conn, bank_uuid, lock="SHARE")
            query = sql.SQL("DELETE FROM {documents} WHERE bank_id = %s AND uuid = ANY(%s) RETURNING uuid").format(
                documents=self._t("documents")
            )
            return {row[0] for row in await (await conn.execute(query, (bank.id, wanted))).fetchall()}

        deleted = await self._transaction(work, bank_uuid)
        return list(dict.fromkeys(u for u in uuids if u in deleted))

    async def get_documents(self, bank_uuid: str, uuids: list[str]) -> list[StoredDocument]:
        wanted = [u for u in uuids if "\x00" not in u]

        async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, StoredDocument]:
            bank = await self._bank(conn, bank_uuid)
            query = sql.SQL(
                "SELECT uuid, content, mime_type, metadata FROM {documents} WHERE bank_id = %s AND uuid = ANY(%s)"
            ).format(documents=self._t("documents"))
            rows = await (await conn.execute(query, (bank.id, wanted))).fetchall()
            return {row[0]: StoredDocument(row[0], bytes(row[1]), row[2], row[3]) for row in rows}

        found = await self._transaction(work, bank_uuid)
        return [found[u] for u in uuids if u in found]

    # -- search ------------------------------------------------------------------------------------

    async def vector_search(self, bank_uuid: str, vector: list[float], k: int, filter_: Filter | None) -> list[Hit]:
        _check_k(k)
        where, params = compile_filter(filter_)
        params.update(v=_Vector(vector), k=k)

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[Hit]:
            bank = await self._bank(conn, bank_uuid)
            if len(vector) != bank.dimension:
                raise BadRequestError(
                    f"a query vector of {len(vector)} dimensions; bank {bank_uuid!r} stores {bank.dimension}",
                    param="vector",
                    provider=self.provider_id,
                )
            select = sql.SQL(
                """SELECT d.uuid, c.chunk_index, c.text, -(c.embedding <#> %(v)s), d.metadata
                   FROM {chunks} c JOIN {documents} d ON d.id = c.document_id
                   WHERE {where} ORDER BY c.embedding <#> %(v)s{ties} LIMIT %(k)s"""
            )
            names = {"chunks": self._t(bank.table), "documents": self._t("documents"), "where": where}
            if bank.index == "flat":
                # An exact scan: ties broken by document and place, so equal answers come in a stable order.
                query = select.format(ties=sql.SQL(", d.uuid, c.chunk_index"), **names)
                return _hits(await (await conn.execute(query, params)).fetchall())
            # The HNSW scan yields at most ef_search candidates, and a filter applies after it: ask for many
            # more than k when filtering, and scan exactly when even that found fewer than k.
            ef_search = max(self.config.hnsw_ef_search, k) if filter_ is None else _MAX_EF_SEARCH
            await conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(ef_search, _MAX_EF_SEARCH)),))
            query = select.format(ties=sql.SQL(""), **names)
            hits = _hits(await (await conn.execute(query, params)).fetchall())
            if len(hits) < k:
                await conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                query = select.format(ties=sql.SQL(", d.uuid, c.chunk_index"), **names)
                hits = _hits(await (await conn.execute(query, params)).fetchall())
            return hits

        return await self._transaction(work, bank_uuid)

    async def keyword_search(self, bank_uuid: str, query: str, k: int, filter_: Filter | None) -> list[Hit]:
        _check_k(k)
        where, params = compile_filter(filter_)
        params.update(q=query.replace("\x00", " "), k=k)

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[Hit]:
            bank = await self._bank(conn, bank_uuid)
            params["cfg"] = bank.text_search_config
            # plainto_tsquery joins the query's words with & (every word must occur); a chunk with any of
            # them should match, ranked by ts_rank_cd. Lexemes never contain spaces, so ' & ' is an operator.
            select = sql.SQL(
                """SELECT d.uuid, c.chunk_index, c.text, ts_rank_cd(c.tsv, q.query), d.metadata
                   FROM (SELECT replace(plainto_tsquery(%(cfg)s::regconfig, %(q)s)::text, ' & ', ' | ')::tsquery
                         AS query) q,
                        {chunks} c JOIN {documents} d ON d.id = c.document_id
                   WHERE c.tsv @@ q.query AND {where}
                   ORDER BY 4 DESC, d.uuid, c.chunk_index LIMIT %(k)s"""
            ).format(chunks=self._t(bank.table), documents=self._t("documents"), where=where)
            return _hits(await (await conn.execute(select, params)).fetchall())

        return await self._transaction(work, bank_uuid)


# -- metadata filters -----------------------------------------------------------------------------------


def compile_filter(filter_: Filter | None) -> tuple[sql.Composable, dict[str, Any]]:
    """SQL over ``d.metadata`` that is true exactly where ``matches(filter_, metadata)`` is, and its parameters.

    Every key and value is a named parameter (``f0``, ``f1``, ...). Each comparison is written to be
    true or false, never NULL, so AND / OR combine them as Python's ``all`` / ``any`` do.
    """
    params: dict[str, Any] = {}

    def bind(value: Any) -> sql.Placeholder:
        name = f"f{len(params)}"
        params[name] = value
        return sql.Placeholder(name)

    def compile_(node: Filter) -> sql.Composable:
        if isinstance(node, All):
            return sql.SQL("({})").format(sql.SQL(" AND ").join(compile_(part) for part in node.parts))
        if isinstance(node, Any_):
            return sql.SQL("({})").format(sql.SQL(" OR ").join(compile_(part) for part in node.parts))
        return _compare(node, bind)

    if filter_ is None:
        return sql.SQL("TRUE"), params
    return compile_(filter_), params


def _compare(node: Compare, bind: Callable[[Any], sql.Placeholder]) -> sql.Composable:
    op, operand = node.op, node.value
    if "\x00" in node.key:
        # No stored key holds a NUL (jsonb cannot): the key is missing from every document.
        return sql.SQL("TRUE" if op in ("$ne", "$nin") else "FALSE")
    value = sql.SQL("(d.metadata -> {})").format(bind(node.key))
    if op in ("$eq", "$ne", "$in", "$nin"):
        # jsonb equality is JSON's: a string is never a number, true is never 1, and 1 equals 1.0.
        items = [operand] if op in ("$eq", "$ne") else list(operand)
        # A NUL or a NaN / infinity is never stored (jsonb cannot hold one), so never equal to a stored value.
        candidates = [Jsonb(item) for item in items if _storable(item)]
        if op in ("$eq", "$in"):
            return sql.SQL("coalesce({} = ANY({}::jsonb[]), false)").format(value, bind(candidates))
        return sql.SQL("({} IS NULL OR NOT ({} = ANY({}::jsonb[])))").format(value, value, bind(candidates))
    symbol = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    if isinstance(operand, str):
        if "\x00" in operand:
            # Stored strings hold no NUL, and NUL sorts before every other character: comparing with the
            # part before the NUL, > and >= both become >, < and <= both become <=.
            operand = operand[: operand.index("\x00")]
            symbol = ">" if symbol.startswith(">") else "<="
        # COLLATE "C" compares UTF-8 bytes, which orders as Python orders code points.
        return sql.SQL(
            "(CASE WHEN jsonb_typeof({value}) = 'string' "
            "THEN ({value} #>> '{{}}') COLLATE \"C\" {symbol} {operand}::text ELSE false END)"
        ).format(value=value, symbol=sql.SQL(symbol), operand=bind(operand))
    # A number (never a boolean: the parser refuses those). CASE, unlike AND, guarantees the cast only
    # runs on numbers. repr of a float is the shortest decimal that reads back as it, so comparing the
    # decimals orders as the floats do.
    is_number = sql.SQL("coalesce(jsonb_typeof({}) = 'number', false)").format(value)
    if isinstance(operand, float) and math.isnan(operand):
        return sql.SQL("FALSE")  # as in Python, NaN is neither greater nor smaller than anything
    if isinstance(operand, float) and math.isinf(operand):
        # Stored numbers are finite (jsonb has no infinity): every one is below +inf and above -inf.
        below = symbol.startswith("<")
        return is_number if below == (operand > 0) else sql.SQL("FALSE")
    return sql.SQL(
        "(CASE WHEN jsonb_typeof({value}) = 'number' THEN {value}::numeric {symbol} {operand}::numeric ELSE false END)"
    ).format(value=value, symbol=sql.SQL(symbol), operand=bind(repr(operand)))


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value
    return not isinstance(value, float) or math.isfinite(value)


# -- helpers --------------------------------------------------------------------------------------------


def _hits(rows: list[tuple[Any, ...]]) -> list[Hit]:
    return [Hit(document_uuid=r[0], chunk_index=r[1], text=r[2], score=float(r[3]), metadata=r[4]) for r in rows]


def _check_k(k: int) -> None:
    if k < 1:
        raise BadRequestError(f"k: expected at least 1, got {k}", param="k")


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise BadRequestError(f"{where}: PostgreSQL text cannot hold NUL characters", param=where)


def _check_documents(documents: list[StoredDocument]) -> None:
    seen: set[str] = set()
    for document in documents:
        _check_text(document.uuid, "documents.uuid")
        _check_text(document.mime_type, "documents.mime_type")
        if document.uuid in seen:
            raise BadRequestError(f"document {document.uuid!r} appears twice", param="documents")
        seen.add(document.uuid)
        _check_metadata(document.metadata, f"document {document.uuid!r} metadata")
        indexes = [chunk.index for chunk in document.chunks]
        if len(set(indexes)) != len(indexes):
            raise BadRequestError(f"document {document.uuid!r}: two chunks share an index", param="documents")


def _check_metadata(value: Any, where: str) -> None:
    """jsonb holds neither NUL characters nor NaN / infinities: say so instead of failing in the database."""
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                raise BadRequestError(
                    f"{where}: key {key!r} holds a NUL character, which jsonb cannot", param="metadata"
                )
            _check_metadata(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_metadata(item, f"{where}[{i}]")
    elif isinstance(value, str) and "\x00" in value:
        raise BadRequestError(f"{where}: a string with a NUL character, which jsonb cannot hold", param="metadata")
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadRequestError(f"{where}: {value} is not a JSON number", param="metadata")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _conninfo(config: PGVectorConfig) -> str:
    if config.dsn is not None and config.dsn.get_secret_value():
        return config.dsn.get_secret_value()
    password = config.password.get_secret_value() if config.password is not None else None
    return make_conninfo(host=config.host, port=config.port, dbname=config.db, user=config.user, password=password)


def _describe_server(config: PGVectorConfig) -> str:
    """host:port/database, for messages: never the password."""
    if config.dsn is not None and config.dsn.get_secret_value():
        try:
            parts = conninfo_to_dict(config.dsn.get_secret_value())
        except psycopg.ProgrammingError:
            return "(the configured dsn, which is malformed)"
        host, port, db = parts.get("host") or "localhost", parts.get("port") or "5432", parts.get("dbname") or "?"
        user = parts.get("user")
    else:
        host, port, db, user = config.host, str(config.port), config.db, config.user
    who = f" as {user!r}" if user else ""
    return f"{host}:{port}/{db}{who}"
