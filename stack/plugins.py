"""Provider plugins: the hook a package implements, and discovery through entry points.

A plugin is a module named by an entry point in the ``llama_stack`` group::

    [project.entry-points.llama_stack]
    my_plugin = "my_package.plugin"

and the module implements the hook::

    from llama_stack.plugins import ProviderSpec, hookimpl

    @hookimpl
    def register_providers(register):
        register(ProviderSpec(api="inference", provider_type="remote::mine", config_class=MyConfig,
                              factory="my_package.provider:build"))

Built-in providers come in through the very same entry points. Entry points are loaded one by one so that
a plugin that fails to import, raises in its hook or claims a provider type that another package already
claims is reported by package name while the others keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from llama_stack.apis.registry import Api

ENTRY_POINT_GROUP = "llama_stack"

PROVIDER_TYPE = re.compile(r"(inline|remote)::[A-Za-z0-9][\w.-]*")
FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")

hookspec = pluggy.HookspecMarker("llama_stack")
hookimpl = pluggy.HookimplMarker("llama_stack")


@dataclass(frozen=True, init=False)
class ProviderSpec:
    """What a plugin declares about one provider type (APIs may be given by name: ``api="inference"``)."""

    api: Api
    # "inline::<name>" runs in the server process; "remote::<name>" calls a service.
    provider_type: str
    # The pydantic model of the provider's ``config:`` block; keep it in a module without heavy imports.
    config_class: type[BaseModel]
    # "package.module:callable", imported only when a distribution selects the provider. It is called as
    # ``factory(config, context)`` (sync or async) and returns an object satisfying the API's Protocol.
    factory: str
    # APIs whose providers this one needs; they are built first and handed over in ``context.deps``.
    depends_on: tuple[Api, ...]
    # APIs this one uses when the distribution serves them (an agent's memory banks or shields): built first
    # and handed over in ``context.deps`` when served, absent from it otherwise.
    optional_depends_on: tuple[Api, ...]
    # What to install when the factory's imports are missing, e.g. "llama-stack-runtime[llama-cpp]".
    requirements: tuple[str, ...]
    description: str

    def __init__(
        self,
        api: Api | str,
        provider_type: str,
        config_class: type[BaseModel],
        factory: str,
        depends_on: Iterable[Api | str] = (),
        optional_depends_on: Iterable[Api | str] = (),
        requirements: Iterable[str] = (),
        description: str = "",
    ) -> None:
        fields = {
            "api": Api(api),
            "provider_type": provider_type,
            "config_class": config_class,
            "factory": factory,
            "depends_on": tuple(Api(a) for a in depends_on),
            "optional_depends_on": tuple(Api(a) for a in optional_depends_on),
            "requirements": tuple(requirements),
            "description": description,
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if not PROVIDER_TYPE.fullmatch(self.provider_type):
            raise ValueError(f"provider_type {self.provider_type!r} must look like 'inline::name' or 'remote::name'")
        if not FACTORY.fullmatch(self.factory):
            raise ValueError(f"factory {self.factory!r} must look like 'package.module:callable'")


@dataclass
class ProviderContext:
    """Handed to a provider's factory with its validated config."""

    provider_id: str
    storage_dir: Path
    deps: dict[Api, Any] = field(default_factory=dict)


class PluginHooks:
    @hookspec
    def register_providers(self, register: Callable[[ProviderSpec], None]) -> None:
        """Hand over this plugin's provider types by calling ``register(spec)`` once per ``ProviderSpec``.

        Called once when the runtime discovers providers. Keep it cheap: import heavy libraries in the
        factory, not here.
        """


@dataclass(frozen=True)
class RegisteredProvider:
    spec: ProviderSpec
    package: str


@dataclass(frozen=True)
class PluginProblem:
    package: str
    plugin: str
    error: str


@dataclass
class ProviderRegistry:
    """Every provider type discovered, and what went wrong on the way."""

    providers: dict[tuple[Api, str], RegisteredProvider] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    # Provider types claimed by several packages; selecting one of them is an error naming the packages.
    conflicts: dict[tuple[Api, str], list[str]] = field(default_factory=dict)

    def types_for(self, api: Api) -> list[str]:
        return sorted(t for a, t in self.providers if a == api)

    def get(self, api: Api, provider_type: str) -> RegisteredProvider | None:
        return self.providers.get((api, provider_type))


def _package_of(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.name if dist is not None else entry_point.value.split(".")[0]


def _load_entry_points(manager: pluggy.PluginManager, registry: ProviderRegistry) -> dict[str, str]:
    """Register each plugin module of the entry point group; return plugin name -> package name."""
    packages: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        package = _package_of(entry_point)
        # One distribution can be visible twice on sys.path (say, installed and on PYTHONPATH).
        if (package, entry_point.name) in seen:
            continue
        seen.add((package, entry_point.name))
        plugin_name = f"{package}:{entry_point.name}"
        try:
            module = entry_point.load()
            manager.register(module, name=plugin_name)
        except Exception as exc:  # a broken plugin must not take the others down
            registry.problems.append(PluginProblem(package, entry_point.name, _describe(exc)))
            continue
        if not manager.get_hookcallers(module):
            manager.unregister(module)
            problem = f"{entry_point.value} implements no register_providers hook (missing @hookimpl?)"
            registry.problems.append(PluginProblem(package, entry_point.name, problem))
            continue
        packages[plugin_name] = package
    return packages


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def discover_providers(extra_plugins: list[ModuleType | object] | None = None) -> ProviderRegistry:
    """Find every provider type: entry points first, then ``extra_plugins`` registered in-process."""
    registry = ProviderRegistry()
    manager = pluggy.PluginManager("llama_stack")
    manager.add_hookspecs(PluginHooks)
    packages = _load_entry_points(manager, registry)
    for plugin in extra_plugins or []:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        try:
            manager.register(plugin, name=name)
        except Exception as exc:
            registry.problems.append(PluginProblem(name, name, _describe(exc)))
            continue
        packages[name] = name

    claimed_by: dict[tuple[Api, str], list[RegisteredProvider]] = {}
    for impl in manager.hook.register_providers.get_hookimpls():
        package = packages.get(impl.plugin_name, impl.plugin_name)
        specs: list[ProviderSpec] = []
        try:
            impl.function(register=specs.append)
            for spec in specs:
                if not isinstance(spec, ProviderSpec):
                    raise TypeError(f"register() takes a ProviderSpec, got {type(spec).__name__}")
        except Exception as exc:
            plugin = impl.plugin_name.split(":", 1)[-1]
            registry.problems.append(PluginProblem(package, plugin, f"register_providers failed: {_describe(exc)}"))
            continue
        for spec in specs:
            claimed_by.setdefault((spec.api, spec.provider_type), []).append(RegisteredProvider(spec, package))

    for key, claims in claimed_by.items():
        if len({c.package for c in claims}) > 1:
            registry.conflicts[key] = sorted({c.package for c in claims})
        else:
            registry.providers[key] = claims[-1]
    return registry


def load_factory(spec: ProviderSpec) -> Callable[..., Any]:
    """Import the provider's factory; a missing dependency says what to install."""
    module_name, _, attribute = spec.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install {' '.join(repr(r) for r in spec.requirements)}" if spec.requirements else ""
        raise ImportError(f"provider {spec.provider_type} cannot be loaded: {exc}{hint}") from exc
    factory: object = getattr(module, attribute, None)
    if not callable(factory):
        raise ImportError(f"provider {spec.provider_type}: {spec.factory} names nothing callable")
    return factory


async def build_provider(spec: ProviderSpec, config: BaseModel, context: ProviderContext) -> Any:
    factory = load_factory(spec)
    impl = factory(config, context)
    if inspect.isawaitable(impl):
        impl = await impl
    return impl
