"""The Together HTTP client every remote::together adapter uses."""

from __future__ import annotations

from typing import Any

import httpx

from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService

from .config import ENV_VAR, PROVIDER_DATA_KEY, TogetherConfig


def together_service(
    config: TogetherConfig, context: ProviderContext, transport: httpx.AsyncBaseTransport | None = None
) -> RemoteService:
    return RemoteService(
        provider_id=context.provider_id,
        vendor="Together",
        config=config,
        env_var=ENV_VAR,
        provider_data_key=PROVIDER_DATA_KEY,
        auth_headers=_bearer,
        transport=transport,
    )


def _bearer(key: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {key}"}
