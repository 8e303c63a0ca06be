"""Routes served by the stack itself: health, the models and the providers it serves, and models registered at
run time.

These are extensions beside the seed contract; no provider implements them (a provider's ``register_model`` is
what the registration route hands a model to).
"""

from __future__ import annotations

from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import Field

from .common import JsonObject, ProviderId, Schema
from .routes import webmethod

# A model id or alias: what requests name, logs print and URLs carry (no control characters).
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Bounds of a model entry (a registration request is one): more is no model anyone serves.
MAX_ALIASES = 32
MAX_REFERENCE_LENGTH = 4096
MAX_SYSTEM_PROMPT_LENGTH = 100_000


class Model(Schema):
    """A model the distribution serves, and which provider serves it."""

    model_id: ModelName = Field(description="The id clients put in requests.")
    provider_id: ProviderId
    provider_model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REFERENCE_LENGTH,
        description="The provider's own name or location of the model; defaults to model_id.",
    )
    model_type: Literal["llm", "embedding", "rerank", "reward"] = Field(
        default="llm",
        description=(
            "llm: completion and chat; embedding: the embeddings route; rerank: the rerank route; reward: a "
            "scorer of a reward_scoring provider (/reward_scoring/score)."
        ),
    )
    aliases: list[ModelName] = Field(
        default_factory=list, max_length=MAX_ALIASES, description="Other ids requests may use for this model."
    )
    context_length: int | None = Field(default=None, gt=0, description="The model's context window, in tokens.")
    system_prompt: str | None = Field(
        default=None,
        max_length=MAX_SYSTEM_PROMPT_LENGTH,
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
    errors: dict[str, str] | None = Field(
        default=None,
        description="Why each failed model failed, by model_id, where the stack knows (a model registered at run "
        "time that could not be loaded again when the server started); absent when there is none.",
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

    @webmethod("POST", "/models/register")
    async def register_model(self, model: Model) -> Model:
        """Serve one more model, from one of the distribution's inference providers, until it is unregistered.

        The model is handed to its provider's register_model (loading it may take seconds) and answered as the
        provider serves it (its context window filled in, say). It is kept in the storage folder and registered
        again when the server starts. 404: no such inference provider; 400: the provider takes no models at run
        time, or refuses this one; 409: its id or an alias is taken.
        """
        ...

    @webmethod("DELETE", "/models/unregister")
    async def unregister_model(self, model_id: Annotated[str, Field(min_length=1, max_length=256)]) -> None:
        """Stop serving a model registered through /models/register and forget it (a model declared in the
        distribution's YAML is a 400). Its requests still running or queued end with an error."""
        ...
