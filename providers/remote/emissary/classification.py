"""Emissary's ``POST /v1/classification``, which both its safety shields and its reward scoring call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_stack.apis.errors import LlamaStackError, ProviderError
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.redaction import excerpt


async def classify(
    service: RemoteService, model: str, text: str, *, missing: Callable[[VendorStatusError], LlamaStackError]
) -> dict[str, float]:
    """The probability of each label the deployment ``model`` gives ``text``.

    A 404 means there is no such deployment; ``missing`` turns it into the caller's error, since whose
    mistake that is (the operator's config or the request's model) depends on who named the deployment.
    """
    body = {"model": model, "input": text, "data_format": "probs"}
    try:
        answer = await service.json("POST", "/v1/classification", json_body=body)
    except VendorStatusError as exc:
        if exc.vendor_status != 404:
            raise
        raise missing(exc) from None
    return class_probabilities(answer, service)


def class_probabilities(answer: Any, service: RemoteService) -> dict[str, float]:
    """``data[0].probs`` of a classification answer (label -> probability), or 502 naming the provider."""
    data = answer.get("data") if isinstance(answer, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    probs = first.get("probs")
    if (
        not isinstance(probs, dict)
        or not probs
        or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probs.values())
    ):
        raise ProviderError(
            f"{service.name} answered the classification without probabilities: {excerpt(answer)}",
            provider=service.provider_id,
        )
    return {str(label): float(p) for label, p in probs.items()}
