"""The ProviderSpecs of a remote provider type that backs several APIs, one adapter module per API."""

from __future__ import annotations

from pydantic import BaseModel

from llama_stack.plugins import ProviderSpec


def remote_provider_specs(
    provider_type: str, package: str, apis: tuple[tuple[str, type[BaseModel], str], ...]
) -> list[ProviderSpec]:
    """One spec per ``(api, config class, description)``; the factory is ``<package>.<api>:build``.

    The adapters need only the runtime's core dependencies, so no spec lists requirements.
    """
    return [
        ProviderSpec(
            api=api,
            provider_type=provider_type,
            config_class=config_class,
            factory=f"{package}.{api}:build",
            description=description,
        )
        for api, config_class, description in apis
    ]
