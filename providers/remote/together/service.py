"""How remote::together reaches Together: a bearer key from TOGETHER_API_KEY or the request."""

from __future__ import annotations

from llama_stack.providers.utils.remote import Vendor

from .config import ENV_VAR, PROVIDER_DATA_KEY

TOGETHER = Vendor(
    name="Together",
    env_var=ENV_VAR,
    provider_data_key=PROVIDER_DATA_KEY,
    auth_headers=lambda key: {"Authorization": f"Bearer {key}"},
)

together_service = TOGETHER.service
