"""Whether each served model is ready, as its provider reports it: what /health shows.

A provider may load some models after the stack has started (an embedding model importing torch while chat
is already served). It says how each is doing through an optional method, sync or async::

    def model_status(self, model_id: str) -> Literal["ready", "loading", "failed"]

A provider without it serves its models once it has started: they count as ready. A provider that loads in
the background may also offer ``async def loaded(self, model_id)``, which returns once the model is served (and
raises the error its calls answer if it could not be loaded): in-process callers wait on it rather than retry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast, get_args

from llama_stack.apis.inspect import HealthInfo, Model, ModelReadiness

log = logging.getLogger(__name__)

READINESS: frozenset[str] = frozenset(get_args(ModelReadiness))


async def health_info(models: Iterable[Model], providers: Mapping[str, Any]) -> HealthInfo:
    """The stack's health: up (it answers), with each model's readiness; ``providers`` by provider_id."""
    return HealthInfo(models=await models_readiness(models, providers))


async def models_readiness(models: Iterable[Model], providers: Mapping[str, Any]) -> dict[str, ModelReadiness]:
    """Each model's readiness by model_id, its provider asked (all of them at once: one slow answer delays
    /health by its own time only)."""
    served = list(models)
    answers = await asyncio.gather(*(model_readiness(providers.get(m.provider_id), m) for m in served))
    return {model.model_id: answer for model, answer in zip(served, answers, strict=True)}


async def wait_until_loaded(models: Iterable[Model], providers: Mapping[str, Any]) -> None:
    """Return once every model is served (each provider's optional ``loaded``); a failed load raises its error."""
    waits = []
    for model in models:
        loaded = getattr(providers.get(model.provider_id), "loaded", None)
        if callable(loaded):
            waits.append(loaded(model.model_id))
    await asyncio.gather(*waits)


async def model_readiness(provider: Any, model: Model) -> ModelReadiness:
    """What ``provider.model_status(model_id)`` answers; ready when it has no such method. A provider whose
    answer is an error or not a readiness has the model counted failed (and logged): a health check must
    not fail with it."""
    report = getattr(provider, "model_status", None)
    if not callable(report):
        return "ready"
    try:
        answer = report(model.model_id)
        if inspect.isawaitable(answer):
            answer = await answer
    except Exception:
        log.exception(
            "provider %s: model_status(%r) failed; reporting the model failed", model.provider_id, model.model_id
        )
        return "failed"
    if answer not in READINESS:
        log.error(
            "provider %s: model_status(%r) answered %r, not one of %s; reporting the model failed",
            model.provider_id, model.model_id, answer, ", ".join(sorted(READINESS)),
        )  # fmt: skip
        return "failed"
    return cast(ModelReadiness, answer)
