"""Placeholder while the provider is written: registers nothing yet."""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    return None
