"""remote::openai-compat: inference and embeddings on any OpenAI-compatible server.

This is how a distribution scales inference past one machine: point it at vLLM, llama.cpp's server,
Ollama, TGI, or another llama-stack server's /v1 routes. See docs/providers/openai-compat.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import OpenAICompatConfig

PROVIDER_TYPE = "remote::openai-compat"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="inference",
            provider_type=PROVIDER_TYPE,
            config_class=OpenAICompatConfig,
            factory="llama_stack.providers.remote.openai_compat.inference:build",
            description="Chat and text completion, streaming, tools, logprobs and embeddings over /v1.",
        )
    )
