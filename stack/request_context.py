"""Per-request data for providers, such as a caller's own API key for a remote service.

A client sends it as a JSON object in the ``X-LlamaStack-Provider-Data`` header (the HTTP client's and the
library client's ``provider_data=`` option); a provider reads it with :func:`provider_data` while it serves
that request. Each provider documents the keys it reads (``together_api_key``, ``emissary_api_key``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from llama_stack.apis.errors import BadRequestError

from .json_input import load_json

PROVIDER_DATA_HEADER = "X-LlamaStack-Provider-Data"

# The default is read-only: it is one object shared by every request that sent no provider data.
_provider_data: ContextVar[Mapping[str, Any]] = ContextVar("llama_stack_provider_data", default=MappingProxyType({}))


def provider_data() -> Mapping[str, Any]:
    """The provider data of the request being served (empty when the caller sent none)."""
    return _provider_data.get()


@contextmanager
def using_provider_data(data: Mapping[str, Any] | None) -> Iterator[None]:
    token = _provider_data.set(dict(data or {}))
    try:
        yield
    finally:
        _provider_data.reset(token)


def parse_provider_data(header: str | bytes) -> dict[str, Any]:
    data = load_json(header, what=f"The {PROVIDER_DATA_HEADER} header")
    if not isinstance(data, dict):
        raise BadRequestError(f"The {PROVIDER_DATA_HEADER} header must hold a JSON object, got {type(data).__name__}")
    return data
