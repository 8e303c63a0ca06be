"""How remote::emissary reaches Emissary: an X-API-Key from EMISSARY_API_KEY or the request."""

from __future__ import annotations

from llama_stack.providers.utils.remote import Vendor

from .config import ENV_VAR, PROVIDER_DATA_KEY

EMISSARY = Vendor(
    name="Emissary",
    env_var=ENV_VAR,
    provider_data_key=PROVIDER_DATA_KEY,
    auth_headers=lambda key: {"X-API-Key": key},
)

emissary_service = EMISSARY.service
