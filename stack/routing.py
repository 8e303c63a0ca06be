"""Serves an API from several providers: each call goes to the provider its dispatch rule picks.

The rules are declared beside the Protocols (``llama_stack.apis.dispatch``); this module carries them out.
A router has one method per routed Protocol method, so it satisfies the Protocol like a provider does: the
server, the in-process client and other providers (an agent calling memory banks) call it the same way.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from llama_stack.apis.dispatch import (
    AllProviders,
    ByModel,
    ByOwner,
    ByShield,
    ByTool,
    Creates,
    FirstProvider,
    Rule,
)
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, NotSupportedError
from llama_stack.apis.inspect import Model
from llama_stack.apis.registry import PROTOCOLS, Api, dispatch_rules
from llama_stack.apis.safety import Shield

from .ownership import OwnerStore


@dataclass(frozen=True)
class RoutedProvider:
    provider_id: str
    package: str
    impl: Any


class ModelTable:
    """The distribution's models by id and alias, and the provider serving each."""

    def __init__(self, models: Sequence[Model]):
        self.models = list(models)
        self._by_name = {name: model for model in self.models for name in (model.model_id, *model.aliases)}

    def find(self, name: str) -> Model | None:
        return self._by_name.get(name)

    def names(self, provider_ids: Sequence[str] | None = None) -> list[str]:
        return sorted(m.model_id for m in self.models if provider_ids is None or m.provider_id in provider_ids)


def method_missing(api: Api, name: str, provider: RoutedProvider) -> NotSupportedError:
    return NotSupportedError(
        f"Provider '{provider.provider_id}' ({provider.package}) does not implement {api.value}.{name}",
        provider=provider.provider_id,
    )


def _get(arguments: Mapping[str, Any], path: str) -> Any:
    head, _, rest = path.partition(".")
    value = arguments.get(head)
    for part in rest.split(".") if rest else ():
        value = getattr(value, part, None)
    return value.value if isinstance(value, Enum) else value


def _set(arguments: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if not rest:
        arguments[head] = value
        return
    arguments[head] = arguments[head].model_copy(update={rest: value})


def _listing(names: Sequence[str], more: bool = False) -> str:
    return (", ".join(names) + (", ..." if more else "")) if names else "none"


class ApiRouter:
    """One API's providers behind one object; calls route by the Protocol's dispatch rules."""

    def __init__(
        self,
        api: Api,
        providers: Sequence[RoutedProvider],
        owners: OwnerStore,
        models: ModelTable,
        shields: Sequence[Shield] = (),
    ):
        if not providers:
            raise ValueError(f"the {api.value} API has no provider")
        self.api = api
        self.providers = {p.provider_id: p for p in providers}
        self._first = providers[0]
        self._owners = owners
        self._models = models
        self._shields = [s for s in shields if s.provider_id in self.providers]
        self._tools: dict[str, str] | None = None
        self._rules = dispatch_rules(api)
        for name, rule in self._rules.items():
            setattr(self, name, self._routed(name, rule))

    # -- building the methods -------------------------------------------------------------------------------

    def _routed(self, name: str, rule: Rule) -> Callable[..., Awaitable[Any]]:
        signature = inspect.signature(getattr(PROTOCOLS[self.api], name))

        async def routed(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(None, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))  # self
            return await self._handle(name, rule, arguments)

        routed.__name__ = name
        routed.__doc__ = getattr(PROTOCOLS[self.api], name).__doc__
        return routed

    async def _handle(self, name: str, rule: Rule, arguments: dict[str, Any]) -> Any:
        if isinstance(rule, ByModel):
            return await self._by_model(name, rule, arguments)
        if isinstance(rule, ByOwner):
            return await self._by_owner(name, rule, arguments)
        if isinstance(rule, Creates):
            return await self._creates(name, rule, arguments)
        if isinstance(rule, ByShield):
            return await self._by_shield(name, rule, arguments)
        if isinstance(rule, ByTool):
            return await self._by_tool(name, rule, arguments)
        if isinstance(rule, AllProviders):
            return await self._all_providers(name, rule, arguments)
        if isinstance(rule, FirstProvider):
            return await self._call(self._first, name, arguments)
        raise TypeError(f"{self.api.value}.{name}: no routing for {type(rule).__name__}")

    async def _call(self, provider: RoutedProvider, name: str, arguments: Mapping[str, Any]) -> Any:
        method = getattr(provider.impl, name, None)
        if not callable(method):
            raise method_missing(self.api, name, provider)
        return await method(**arguments)

    def _named_provider(self, provider_id: str, field: str) -> RoutedProvider:
        provider = self.providers.get(provider_id)
        if provider is None:
            raise NotFoundError(
                f"No {self.api.value} provider '{provider_id}' (providers: {_listing(list(self.providers))})",
                param=field.rpartition(".")[2],
                code="provider_not_found",
            )
        return provider

    # -- the rules ------------------------------------------------------------------------------------------

    def _model_provider(self, name: str, field: str) -> tuple[RoutedProvider, Model | None]:
        model = self._models.find(name)
        if model is not None and model.provider_id in self.providers:
            return self.providers[model.provider_id], model
        if len(self.providers) == 1:  # the one provider decides what it serves
            return self._first, None
        served = self._models.names(list(self.providers))
        raise NotFoundError(
            f"The model '{name}' is not served by this distribution's {self.api.value} providers "
            f"(served models: {_listing(served)})",
            param=field.rpartition(".")[2],
            code="model_not_found",
        )

    async def _by_model(self, name: str, rule: ByModel, arguments: dict[str, Any]) -> Any:
        provider, model = self._model_provider(_get(arguments, rule.field), rule.field)
        if model is not None and _get(arguments, rule.field) != model.model_id:
            _set(arguments, rule.field, model.model_id)
        return await self._call(provider, name, arguments)

    def _owner_of(self, resource: str, key: str) -> RoutedProvider | None:
        provider_id = self._owners.owner(self.api.value, resource, key)
        if provider_id is None:
            return None
        provider = self.providers.get(provider_id)
        if provider is None:
            raise NotFoundError(
                f"The {resource} '{key}' is kept by provider '{provider_id}', which this distribution no longer "
                f"runs (its {self.api.value} providers: {_listing(list(self.providers))})",
                code=f"{resource}_not_found",
            )
        return provider

    async def _learn_owners(self, resource: str) -> None:
        """Ask every provider for its listing of ``resource`` and write the owners down (for resources made
        before the stack recorded owners, or when a record was lost)."""
        for name, rule in self._rules.items():
            if isinstance(rule, AllProviders) and rule.resource == resource:
                await self._all_providers(name, rule, {})

    async def _by_owner(self, name: str, rule: ByOwner, arguments: dict[str, Any]) -> Any:
        key = str(_get(arguments, rule.field))
        provider = self._owner_of(rule.resource, key)
        if provider is None and len(self.providers) > 1:
            await self._learn_owners(rule.resource)
            provider = self._owner_of(rule.resource, key)
        if provider is None:
            if len(self.providers) > 1:
                known = self._owners.keys(self.api.value, rule.resource)
                raise NotFoundError(
                    f"No {rule.resource} '{key}' (known: {_listing(known, len(known) == 20)})",
                    param=rule.field.rpartition(".")[2],
                    code=f"{rule.resource}_not_found",
                )
            provider = self._first  # it answers for its own resources, found or not
        answer = await self._call(provider, name, arguments)
        if rule.forgets:
            self._owners.forget(self.api.value, rule.resource, key)
        else:
            self._remember(rule.resource, key, provider)
        return answer

    def _remember(self, resource: str, key: str, provider: RoutedProvider) -> None:
        if self._owners.owner(self.api.value, resource, key) != provider.provider_id:
            self._owners.record(self.api.value, resource, key, provider.provider_id)

    def _creator(self, rule: Creates, arguments: dict[str, Any]) -> RoutedProvider:
        named = _get(arguments, rule.provider_field) if rule.provider_field else None
        if named is not None:
            return self._named_provider(named, rule.provider_field or "")
        if rule.model_field is not None:
            model = self._models.find(_get(arguments, rule.model_field))
            if model is not None and model.provider_id in self.providers:
                if model.model_id != _get(arguments, rule.model_field):  # an alias: the provider knows the id
                    _set(arguments, rule.model_field, model.model_id)
                return self.providers[model.provider_id]
        return self._first

    async def _creates(self, name: str, rule: Creates, arguments: dict[str, Any]) -> Any:
        provider = self._creator(rule, arguments)
        key = None if rule.from_answer else str(_get(arguments, rule.field))
        if key is not None:
            owner = self._owner_of(rule.resource, key)
            if owner is not None and owner is not provider:
                raise ConflictError(
                    f"The {rule.resource} '{key}' already exists on provider '{owner.provider_id}'",
                    param=rule.field.rpartition(".")[2],
                    code=f"{rule.resource}_exists",
                )
        if rule.provider_field and "." not in rule.provider_field:
            arguments.pop(rule.provider_field, None)  # a routing parameter, not the provider's
        answer = await self._call(provider, name, arguments)
        if key is None:
            key = str(_get({"answer": answer}, f"answer.{rule.field}"))
        self._owners.record(self.api.value, rule.resource, key, provider.provider_id)
        return answer

    async def _by_shield(self, name: str, rule: ByShield, arguments: dict[str, Any]) -> Any:
        shield_id = _get(arguments, rule.shield_id_field)
        shield_type = _get(arguments, rule.shield_type_field)
        registered = ", ".join(f"{s.shield_id} ({s.shield_type.value})" for s in self._shields) or "none"
        if shield_id is not None:
            shield = next((s for s in self._shields if s.shield_id == shield_id), None)
            if shield is None:
                raise NotFoundError(
                    f"No shield '{shield_id}' is registered (registered shields: {registered})",
                    param="shield_id",
                    code="shield_not_found",
                )
            if shield.shield_type.value != shield_type:
                raise BadRequestError(
                    f"Shield '{shield_id}' is a {shield.shield_type.value} shield, not {shield_type}",
                    param="shield_type",
                )
        else:
            shield = next((s for s in self._shields if s.shield_type.value == shield_type), None)
        if shield is not None:
            request = arguments["request"]
            params = {**shield.params, **request.params}
            arguments["request"] = request.model_copy(update={"params": params, "shield_id": shield.shield_id})
            return await self._call(self.providers[shield.provider_id], name, arguments)
        provider = self._provider_serving_shield_type(shield_type)
        if provider is None and len(self.providers) == 1:
            provider = self._first  # it says best why it cannot
        if provider is None:
            served = "; ".join(
                f"{p.provider_id}: {', '.join(getattr(t, 'value', t) for t in p.impl.shield_types)}"
                for p in self.providers.values()
            )
            raise NotFoundError(
                f"No shield of type {shield_type} is served (registered shields: {registered}; provider types: "
                f"{served})",
                param="shield_type",
                code="shield_not_found",
            )
        return await self._call(provider, name, arguments)

    def _provider_serving_shield_type(self, shield_type: str) -> RoutedProvider | None:
        """The first provider serving the type: one whose ``shield_types`` holds it, or one that does not say
        (it answers for itself)."""
        for provider in self.providers.values():
            types = getattr(provider.impl, "shield_types", None)
            if types is None or shield_type in {getattr(t, "value", t) for t in types}:
                return provider
        return None

    async def _tool_table(self, refresh: bool) -> dict[str, str]:
        if self._tools is None or refresh:
            table: dict[str, str] = {}
            for provider in self.providers.values():
                for tool in await self._call(provider, "list_tools", {}):
                    table.setdefault(str(_get({"tool": tool}, "tool.tool_name")), provider.provider_id)
            self._tools = table
        return self._tools

    async def _by_tool(self, name: str, rule: ByTool, arguments: dict[str, Any]) -> Any:
        tool = str(_get(arguments, rule.field))
        if len(self.providers) == 1:
            return await self._call(self._first, name, arguments)
        table = await self._tool_table(refresh=False)
        if tool not in table:
            table = await self._tool_table(refresh=True)
        if tool not in table:
            raise NotFoundError(
                f"No tool '{tool}' is served (tools: {_listing(sorted(table))})",
                param="tool_name",
                code="tool_not_found",
            )
        return await self._call(self.providers[table[tool]], name, arguments)

    async def _all_providers(self, name: str, rule: AllProviders, arguments: dict[str, Any]) -> list[Any]:
        serving = [p for p in self.providers.values() if callable(getattr(p.impl, name, None))]
        if not serving:
            raise method_missing(self.api, name, self._first)
        answers = await asyncio.gather(*(self._call(p, name, arguments) for p in serving))
        joined: list[Any] = []
        for provider, items in zip(serving, answers, strict=True):
            for item in items:
                if rule.item_field is not None and rule.resource is not None:
                    self._remember(rule.resource, str(_get({"item": item}, f"item.{rule.item_field}")), provider)
                joined.append(item)
        return joined
