"""Builds a distribution's providers in dependency order and exposes one implementation per API."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from llama_stack.apis.errors import NotFoundError
from llama_stack.apis.inspect import HealthInfo, Model, ProviderInfo
from llama_stack.apis.routes import Api

from .config import ConfigError, DistributionConfig, load_distribution, validate_provider_configs
from .plugins import ProviderContext, ProviderRegistry, build_provider, discover_providers
from .routing import InferenceRouter

log = logging.getLogger(__name__)


@dataclass
class BuiltProvider:
    api: Api
    provider_id: str
    provider_type: str
    package: str
    impl: Any


@dataclass
class Stack:
    """A running distribution: its providers, built and ready, and the implementation serving each API."""

    config: DistributionConfig
    registry: ProviderRegistry
    source: str = "<distribution>"
    providers: dict[str, BuiltProvider] = field(default_factory=dict)
    impls: dict[Api, Any] = field(default_factory=dict)
    # The protocols the stack serves by translating onto an API (the OpenAI routes), by facade name.
    facade_impls: dict[str, Any] = field(default_factory=dict)
    # The distribution's models as their providers serve them (see _register_models).
    models: list[Model] = field(default_factory=list)

    @classmethod
    def from_distribution(
        cls,
        name_or_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        registry: ProviderRegistry | None = None,
    ) -> Stack:
        config = load_distribution(name_or_path, env)
        return cls(config, registry or discover_providers(), source=str(name_or_path))

    def impl(self, api: Api) -> Any:
        impl = self.impls.get(api)
        if impl is None:
            served = ", ".join(a.value for a in self.impls) or "none"
            raise NotFoundError(f"The {api.value} API is not served by this distribution (it serves: {served})")
        return impl

    def _build_order(self) -> list[Api]:
        graph: dict[Api, set[Api]] = {}
        for api, entry in self.config.provider_entries():
            spec = self.registry.get(api, entry.provider_type).spec  # type: ignore[union-attr]
            missing = [d for d in spec.depends_on if d not in self.config.apis]
            if missing:
                raise ConfigError(
                    f"{self.source}: provider '{entry.provider_id}' ({entry.provider_type}) needs the "
                    f"{', '.join(d.value for d in missing)} API, which this distribution does not serve"
                )
            graph.setdefault(api, set()).update(spec.depends_on)
        try:
            return list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            raise ConfigError(f"{self.source}: providers depend on each other in a cycle: {exc.args[1]}") from None

    async def start(self) -> None:
        configs = validate_provider_configs(self.config, self.registry, self.source)
        storage = Path(self.config.storage.dir)
        storage.mkdir(parents=True, exist_ok=True)
        try:
            for api in self._build_order():
                for entry in self.config.providers[api]:
                    registered = self.registry.get(api, entry.provider_type)
                    assert registered is not None  # validate_provider_configs checked it
                    context = ProviderContext(
                        provider_id=entry.provider_id,
                        storage_dir=storage / entry.provider_id,
                        deps={dep: self.impls[dep] for dep in registered.spec.depends_on},
                    )
                    log.info("building provider %s (%s)", entry.provider_id, entry.provider_type)
                    impl = await build_provider(registered.spec, configs[entry.provider_id], context)
                    self.providers[entry.provider_id] = BuiltProvider(
                        api, entry.provider_id, entry.provider_type, registered.package, impl
                    )
                await self._serve(api)
        except BaseException:
            await self.shutdown()
            raise

    async def _serve(self, api: Api) -> None:
        built = {p.provider_id: p.impl for p in self.providers.values() if p.api == api}
        if api == Api.inference:
            self.models = await self._register_models(built)
            self.impls[api] = InferenceRouter(self.models, built)
        else:
            (self.impls[api],) = built.values()

    async def _register_models(self, built: dict[str, Any]) -> list[Model]:
        """Hand each model entry to its provider. A provider may answer with the entry completed by what only
        it knows (the context window it loaded, say); it may not rename the model or move it elsewhere."""
        served = []
        for model in self.config.models:
            log.info("loading model %s on %s", model.model_id, model.provider_id)
            answer = await built[model.provider_id].register_model(model)
            if answer is None:
                answer = model
            elif not isinstance(answer, Model) or (answer.model_id, answer.provider_id) != (
                model.model_id,
                model.provider_id,
            ):
                package = self.providers[model.provider_id].package
                raise ValueError(
                    f"provider {model.provider_id!r} ({package}): register_model({model.model_id!r}) must return None "
                    f"or that Model (same model_id and provider_id), got {answer!r}"
                )
            served.append(answer)
        return served

    async def shutdown(self) -> None:
        for built in reversed(list(self.providers.values())):
            close = getattr(built.impl, "shutdown", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:
                log.exception("provider %s failed to shut down", built.provider_id)
        self.providers.clear()
        self.impls.clear()
        self.facade_impls.clear()
        self.models = []

    # The stack's own inspection routes (llama_stack.apis.inspect.Inspect).
    async def health(self) -> HealthInfo:
        return HealthInfo()

    async def list_models(self) -> list[Model]:
        return list(self.models)

    async def list_providers(self) -> list[ProviderInfo]:
        return [
            ProviderInfo(api=p.api.value, provider_id=p.provider_id, provider_type=p.provider_type, package=p.package)
            for p in self.providers.values()
        ]
