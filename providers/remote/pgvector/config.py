"""Config of remote::pgvector: memory banks in PostgreSQL with the pgvector extension."""

from __future__ import annotations

from pydantic import Field, SecretStr

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
    table_prefix: str = Field(default="llama_stack_", pattern=r"^[a-z_][a-z0-9_]*$", description="Prefix of the tables.")
    pool_size: int = Field(default=4, ge=1, description="Connections kept open.")
