"""Config of remote::pgvector: memory banks in PostgreSQL with the pgvector extension."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from llama_stack.providers.utils.memory.config import MemoryBankDefaults


class PGVectorConfig(MemoryBankDefaults):
    host: str = Field(default="localhost")
    port: int = Field(default=5432, ge=1, le=65535)
    db: str = Field(default="postgres", description="The database.")
    user: str = Field(default="postgres")
    password: SecretStr | None = Field(default=None, description="Never logged.")
    dsn: SecretStr | None = Field(
        default=None, description="A full connection URI (postgresql://...); when set, it wins over the fields above."
    )
    # PostgreSQL names are at most 63 bytes; a bank's tables add up to 31 characters to the prefix.
    table_prefix: str = Field(
        default="llama_stack_", pattern=r"^[a-z_][a-z0-9_]*$", max_length=32, description="Prefix of the tables."
    )
    pool_size: int = Field(default=4, ge=1, description="Connections kept open.")
    connect_timeout_s: int = Field(
        default=10, ge=1, le=600, description="Seconds to wait for a connection before answering 503."
    )
    text_search_config: str = Field(
        default="english",
        pattern=r"^[a-z_][a-z0-9_]*$",
        description=(
            "The PostgreSQL text search configuration of keyword search (hybrid banks): english stems words and "
            "drops stop words, simple keeps words as written. A bank keeps the one in force when it was created."
        ),
    )
    hnsw_m: int = Field(
        default=16,
        ge=2,
        le=100,
        description="HNSW banks: graph neighbours per vector (more: better recall, more memory, slower inserts).",
    )
    hnsw_ef_construction: int = Field(
        default=64,
        ge=4,
        le=1000,
        description=(
            "HNSW banks: candidates considered while inserting (more: better graph, slower inserts); "
            "at least 2 * hnsw_m."
        ),
    )
    hnsw_ef_search: int = Field(
        default=100,
        ge=1,
        le=1000,
        description=(
            "HNSW banks: candidates considered per query, raised to k when k is larger (more: better recall, slower "
            "queries). Filtered queries consider 1000 and fall back to an exact scan when fewer than k chunks match."
        ),
    )

    @model_validator(mode="after")
    def _ef_construction_fits(self) -> PGVectorConfig:
        # pgvector refuses CREATE INDEX otherwise; better to say so when the distribution starts.
        if self.hnsw_ef_construction < 2 * self.hnsw_m:
            raise ValueError(
                f"hnsw_ef_construction ({self.hnsw_ef_construction}) must be at least 2 * hnsw_m ({2 * self.hnsw_m})"
            )
        return self
