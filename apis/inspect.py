"""Inspection routes served by the stack itself: health, the models and the providers it serves.

These are extensions beside the seed contract; no provider implements them.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from .common import JsonObject, Schema
from .routes import webmethod


class Model(Schema):
    """A model the distribution serves, and which provider serves it."""

    model_id: str = Field(description="The id clients put in requests.")
    provider_id: str
    provider_model_id: str | None = Field(
        default=None, description="The provider's own name or location of the model; defaults to model_id."
    )
    model_type: Literal["llm", "embedding", "rerank"] = Field(
        default="llm",
        description="llm: completion and chat; embedding: the embeddings route; rerank: the rerank route.",
    )
    aliases: list[str] = Field(default_factory=list, description="Other ids requests may use for this model.")
    context_length: int | None = Field(default=None, gt=0, description="The model's context window, in tokens.")
    system_prompt: str | None = Field(
        default=None,
        description="The system message chat requests get when their dialog has none (like a Modelfile's SYSTEM).",
    )
    metadata: JsonObject = Field(default_factory=dict)


class ProviderInfo(Schema):
    api: str
    provider_id: str
    provider_type: str
    package: str = Field(description="The Python distribution package that registered the provider type.")


ModelReadiness = Literal["ready", "loading", "failed"]


class HealthInfo(Schema):
    status: Literal["ok"] = Field(default="ok", description="ok whenever the server answers, models loading or not.")
    models: dict[str, ModelReadiness] = Field(
        default_factory=dict,
        description="Each served model by model_id: ready (its calls are served), loading (its calls answer 503 "
        "with Retry-After until it is ready) or failed (it could not load; its calls answer an error saying why).",
    )


@runtime_checkable
class Inspect(Protocol):
    @webmethod("GET", "/health")
    async def health(self) -> HealthInfo:
        """Answers while the server is up; never requires an API key."""
        ...

    @webmethod("GET", "/models/list")
    async def list_models(self) -> list[Model]:
        """The models this distribution serves, with the provider serving each."""
        ...

    @webmethod("GET", "/providers/list")
    async def list_providers(self) -> list[ProviderInfo]:
        """The providers this distribution runs."""
        ...
