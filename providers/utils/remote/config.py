"""Config fields every remote provider has; each vendor's config subclasses it with its own defaults."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class RemoteServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="The service's base URL.")
    api_key: SecretStr | None = Field(
        default=None,
        description=(
            "The API key. When unset, the provider's environment variable is read; a request's "
            "X-LlamaStack-Provider-Data header can bring its own key instead. Never logged."
        ),
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds to wait for the service per attempt.")
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries on 429/503/504 and dropped connections, with backoff."
    )
    retry_backoff: float = Field(
        default=0.5,
        ge=0,
        description="Seconds before the first retry; each retry doubles it (capped at 8 s), with full jitter.",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: Any) -> Any:
        # `api_key: ${env.VENDOR_API_KEY:=}` with the variable unset gives "": no key, not an empty one, so the
        # environment and per-request keys are still looked up and a missing key is a clear 401.
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value
