"""Config of remote::openai-compat: any server speaking OpenAI's API (vLLM, llama.cpp's server, Ollama, TGI)."""

from __future__ import annotations

from pydantic import Field

from llama_stack.providers.utils.remote import RemoteServiceConfig

ENV_VAR = "OPENAI_COMPAT_API_KEY"
PROVIDER_DATA_KEY = "openai_compat_api_key"


class OpenAICompatConfig(RemoteServiceConfig):
    url: str = Field(description="The server's base URL including /v1, e.g. http://localhost:8000/v1.")
    api_key_required: bool = Field(
        default=False, description="Most local servers take any key or none; when false, a missing key is fine."
    )
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight at once for batches.")
