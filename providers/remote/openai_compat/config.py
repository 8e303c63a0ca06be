"""Config of remote::openai-compat: any server speaking OpenAI's API (vLLM, llama.cpp's server, Ollama, TGI)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llama_stack.providers.utils.inference.attachments import AttachmentConfig
from llama_stack.providers.utils.remote import RemoteServiceConfig

ENV_VAR = "OPENAI_COMPAT_API_KEY"
PROVIDER_DATA_KEY = "openai_compat_api_key"


class OpenAICompatConfig(RemoteServiceConfig):
    url: str = Field(description="The server's base URL including /v1, e.g. http://localhost:8000/v1.")
    api_key_required: bool = Field(
        default=False, description="Most local servers take any key or none; when false, a missing key is fine."
    )
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight at once for batches.")
    sampling_extensions: Literal["vllm", "llama.cpp", "none"] = Field(
        default="vllm",
        description=(
            "How top_k and repetition_penalty travel, which OpenAI's API lacks: 'vllm' sends top_k and "
            "repetition_penalty (vLLM, SGLang, TGI, llama-stack), 'llama.cpp' sends top_k and repeat_penalty, "
            "'none' sends neither and refuses requests that set them."
        ),
    )
    stream_usage: bool = Field(
        default=True,
        description="Ask for token counts on streams (stream_options.include_usage); false for servers that refuse it.",
    )
    check_models: bool = Field(
        default=True,
        description=(
            "At start-up, check each model against the server's GET /models and refuse to start when one is "
            "missing; false for servers that answer any model name (llama.cpp's server)."
        ),
    )
    completion_max_tokens: int = Field(
        default=1024,
        ge=1,
        description=(
            "max_tokens sent for text completions that set none (0): OpenAI's /completions would stop after 16."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments are fetched and inlined (images are sent as image_url parts).",
    )
