"""Builds a distribution's providers in dependency order and serves each API through a router over them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from llama_stack.apis.dispatch import ByModel
from llama_stack.apis.errors import NotFoundError, ServiceUnavailableError
from llama_stack.apis.inspect import HealthInfo, Model, ProviderInfo
from llama_stack.apis.registry import Api, dispatch_rules

from .config import ConfigError, DistributionConfig, load_distribution, validate_provider_configs
from .inference_routing import InferenceRouter
from .model_store import ModelStore
from .ownership import OwnerStore
from .plugins import ProviderContext, ProviderRegistry, build_provider, discover_providers
from .routing import ApiRouter, ModelTable, RoutedProvider
from .runtime_models import RuntimeModels

# The stack's own records (which provider owns each bank, job, dataset and agent), in the storage folder.
OWNERS_FILE = "routing.sqlite"
# The models registered at run time (POST /models/register), in the storage folder.
MODELS_FILE = "models.sqlite"

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
    _owners: OwnerStore | None = None
    _runtime_models: RuntimeModels | None = None

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
            registered = self.registry.get(api, entry.provider_type)
            assert registered is not None  # validate_provider_configs checked it
            spec = registered.spec
            missing = [d for d in spec.depends_on if d not in self.config.apis]
            if missing:
                raise ConfigError(
                    f"{self.source}: provider '{entry.provider_id}' ({entry.provider_type}) needs the "
                    f"{', '.join(d.value for d in missing)} API, which this distribution does not serve"
                )
            graph.setdefault(api, set()).update(spec.depends_on)
            graph[api].update(d for d in spec.optional_depends_on if d in self.config.apis)
        try:
            return list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            raise ConfigError(f"{self.source}: providers depend on each other in a cycle: {exc.args[1]}") from None

    async def start(self) -> None:
        configs = validate_provider_configs(self.config, self.registry, self.source)
        storage = Path(self.config.storage.dir)
        try:
            # Once, before anything is served: the storage folder and the owners' table.
            self._owners = OwnerStore(storage / OWNERS_FILE)
            self._runtime_models = RuntimeModels(self, ModelStore(storage / MODELS_FILE))
            for api in self._build_order():
                for entry in self.config.providers[api]:
                    registered = self.registry.get(api, entry.provider_type)
                    assert registered is not None  # validate_provider_configs checked it
                    spec = registered.spec
                    wanted = [*spec.depends_on, *(d for d in spec.optional_depends_on if d in self.impls)]
                    context = ProviderContext(
                        provider_id=entry.provider_id,
                        storage_dir=storage / entry.provider_id,
                        deps={dep: self.impls[dep] for dep in wanted},
                    )
                    log.info("building provider %s (%s)", entry.provider_id, entry.provider_type)
                    impl = await build_provider(spec, configs[entry.provider_id], context)
                    built = BuiltProvider(api, entry.provider_id, entry.provider_type, registered.package, impl)
                    self.providers[entry.provider_id] = built
                    self._check_protocol(built)
                await self._serve(api)
        except BaseException:
            await self.shutdown()
            raise

    def _check_protocol(self, built: BuiltProvider) -> None:
        """A provider lacking a method its API requires fails the start, naming its package. Optional methods
        may be missing (a call answers 501), and a method serving one type of model is only required of the
        providers serving models of that type."""
        served_types = {m.model_type for m in self.config.models if m.provider_id == built.provider_id}
        missing = []
        for name, rule in dispatch_rules(built.api).items():
            if rule.optional or callable(getattr(built.impl, name, None)):
                continue
            if isinstance(rule, ByModel) and rule.model_type is not None and rule.model_type not in served_types:
                continue
            missing.append(name)
        if missing:
            raise ConfigError(
                f"{self.source}: provider '{built.provider_id}' ({built.provider_type}, from package "
                f"{built.package}) does not implement {', '.join(f'{built.api.value}.{m}' for m in missing)}, "
                f"which the {built.api.value} API requires"
            )

    async def _serve(self, api: Api) -> None:
        routed = [RoutedProvider(p.provider_id, p.package, p.impl) for p in self.providers.values() if p.api == api]
        self.models.extend(await self._register_models(routed))
        if api == Api.inference:
            served = [m for m in self.models if m.provider_id in {p.provider_id for p in routed}]
            self.impls[api] = InferenceRouter(served, {p.provider_id: p for p in routed})
            assert self._runtime_models is not None  # made by start()
            await self._runtime_models.restore()  # after the distribution's own models
        else:
            assert self._owners is not None  # opened by start()
            self.impls[api] = ApiRouter(api, routed, self._owners, ModelTable(self.models), self.config.shields)

    async def _register_models(self, routed: list[RoutedProvider]) -> list[Model]:
        """Hand each model entry to its provider. A provider may answer with the entry completed by what only
        it knows (the context window it loaded, say); it may not rename the model or move it elsewhere."""
        served = []
        providers = {p.provider_id: p.impl for p in routed}
        for model in self.config.models:
            if model.provider_id not in providers:
                continue
            register = getattr(providers[model.provider_id], "register_model", None)
            if register is None:
                served.append(model)
                continue
            log.info("loading model %s on %s", model.model_id, model.provider_id)
            answer = await register(model)
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
        if self._owners is not None:
            self._owners.close()
            self._owners = None
        if self._runtime_models is not None:
            self._runtime_models.close()
            self._runtime_models = None

    # Models registered at run time join and leave the routing here (see runtime_models.py).
    def serve_model(self, model: Model, failure: str | None = None) -> None:
        """Route ``model`` (an inference provider's) from now on; with ``failure``, its calls answer why it is
        not served."""
        built = self.providers[model.provider_id]
        router = self.impls[Api.inference]
        router.add_model(model, RoutedProvider(built.provider_id, built.package, built.impl), failure)
        self.models.append(model)

    def unserve_model(self, model_id: str) -> None:
        self.impls[Api.inference].remove_model(model_id)
        self.models[:] = [m for m in self.models if m.model_id != model_id]

    def _runtime(self) -> RuntimeModels:
        if self._runtime_models is None:
            raise ServiceUnavailableError("The stack is not started (or is shutting down)")
        return self._runtime_models

    # The stack's own routes (llama_stack.apis.inspect.Inspect).
    async def health(self) -> HealthInfo:
        from .readiness import health_info

        runtime = self._runtime_models
        failed = runtime.routed_failures() if runtime is not None else {}
        providers = {p.provider_id: p.impl for p in self.providers.values()}
        # A failed model's provider does not know it: it is not asked.
        info = await health_info([m for m in self.models if m.model_id not in failed], providers)
        info.models.update(dict.fromkeys(failed, "failed"))
        if runtime is not None and runtime.failures:
            info.errors = dict(runtime.failures)
        return info

    async def list_models(self) -> list[Model]:
        return list(self.models)

    async def register_model(self, model: Model) -> Model:
        return await self._runtime().register(model)

    async def unregister_model(self, model_id: str) -> None:
        await self._runtime().unregister(model_id)

    async def list_providers(self) -> list[ProviderInfo]:
        return [
            ProviderInfo(api=p.api.value, provider_id=p.provider_id, provider_type=p.provider_type, package=p.package)
            for p in self.providers.values()
        ]
