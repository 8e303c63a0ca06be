"""Config of inline::datasets: where datasets may be read from (the URL policy), and how big they may be."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from llama_stack.providers.utils.datasets import DatasetSourceConfig


class DatasetsConfig(DatasetSourceConfig):
    """The URL policy of ``DatasetSourceConfig`` (file_roots, allow_http, allowed_hosts, max_bytes, timeouts)
    plus the provider's own settings."""

    max_rows: int = Field(
        default=1_000_000, ge=1, description="The most rows a dataset may hold; a larger one is refused with 400."
    )
    db_path: Path | None = Field(
        default=None,
        description="The SQLite file of registered datasets; unset: datasets.sqlite in the provider's storage directory.",
    )
