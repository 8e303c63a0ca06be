"""The models registered with a remote provider, and the name its vendor knows each by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from llama_stack.apis.errors import NotFoundError
from llama_stack.apis.inspect import Model

from .service import RemoteService

M = TypeVar("M")


def registered_model(models: Mapping[str, M], model_id: str, service: RemoteService) -> M:
    """What is registered as ``model_id``; a 404 listing what is, before anything is sent to the vendor."""
    found = models.get(model_id)
    if found is None:
        served = ", ".join(sorted(models)) or "none"
        raise NotFoundError(
            f"{service.name} does not serve model '{model_id}' (it serves: {served})",
            provider=service.provider_id,
            param="model",
        )
    return found


def vendor_model_name(model: Model) -> str:
    """The vendor's name for the model: ``provider_model_id``, else the stack's own id."""
    return model.provider_model_id or model.model_id
