"""The Emissary HTTP client every remote::emissary adapter uses."""

from __future__ import annotations

from typing import Any

import httpx

from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService

from .config import ENV_VAR, PROVIDER_DATA_KEY, EmissaryConfig


def emissary_service(
    config: EmissaryConfig, context: ProviderContext, transport: httpx.AsyncBaseTransport | None = None
) -> RemoteService:
    return RemoteService(
        provider_id=context.provider_id,
        vendor="Emissary",
        config=config,
        env_var=ENV_VAR,
        provider_data_key=PROVIDER_DATA_KEY,
        auth_headers=_api_key_header,
        transport=transport,
    )


def _api_key_header(key: str) -> dict[str, Any]:
    return {"X-API-Key": key}
