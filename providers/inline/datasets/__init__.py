"""inline::datasets: datasets registered by URL with typed columns, kept in SQLite on this machine.

A dataset is read (JSON Lines, JSON, CSV or Parquet) and every row checked against its declared columns
before it is acknowledged; its rows are served a page at a time. Only the declaration here; the
implementation is imported when a distribution selects the provider (pyarrow only when a Parquet dataset
is read). See docs/providers/datasets.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import DatasetsConfig

PROVIDER_TYPE = "inline::datasets"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="datasets",
            provider_type=PROVIDER_TYPE,
            config_class=DatasetsConfig,
            factory="llama_stack.providers.inline.datasets.provider:build",
            description="Datasets by URL (data:, file:// under file_roots, http(s) when allowed) with typed columns, "
            "rows checked at creation, kept in SQLite.",
        )
    )
