"""Models registered while the stack runs (``POST /models/register``, ``DELETE /models/unregister``).

A registration is checked (bounds, the provider, the names), handed to its inference provider, written down
(:mod:`.model_store`), then served: the inference router and ``/models/list`` know it from then on. When the
stack starts again, after the distribution's own models, each stored model is handed to its provider again; one
that fails then (a checkpoint gone, a provider no longer in the distribution) does not stop the start: it stays
listed, ``/health`` says ``failed`` with the reason under ``errors``, its calls answer 502 with the same reason,
and it can be unregistered.

What a client may register is the provider's call. A provider that loads local files (``inline::*``) takes models
at run time only through ``register_client_model``, where it holds what a client names to its own rules (see
inline::torch's ``checkpoint_roots``); a remote provider's ``register_model`` only names a vendor's model, and is
used as it is. A provider may have ``unregister_model``; without it an unregistered model is only no longer routed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
    NotFoundError,
    ProviderError,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.registry import Api

from .model_store import ModelStore

if TYPE_CHECKING:
    from .resolver import BuiltProvider, Stack

log = logging.getLogger(__name__)

# The metadata of a registered model, as JSON, at most: it is stored and listed, and no provider reads more.
MAX_METADATA_BYTES = 64 * 1024


def _listing(names: list[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names)) or "none"


class RuntimeModels:
    """The stack's models registered at run time: which they are, and why any of them is not served."""

    def __init__(self, stack: Stack, store: ModelStore):
        self._stack = stack
        self._store = store
        self._registered: set[str] = set()  # model_ids registered at run time (served or failed)
        # Those the stack routes (served, or failed with their calls answering why); a stored model whose names
        # the distribution's YAML now declares is not routed: its id names the declared model.
        self._routed: set[str] = set()
        self._pending: set[str] = set()  # names (ids and aliases) of registrations in progress
        self._leaving: set[str] = set()  # model_ids being unregistered
        self.failures: dict[str, str] = {}  # model_id -> why it is not served

    # -- checks ------------------------------------------------------------------------------------

    def _inference_providers(self) -> dict[str, BuiltProvider]:
        return {p.provider_id: p for p in self._stack.providers.values() if p.api == Api.inference}

    def _provider(self, provider_id: str) -> BuiltProvider:
        providers = self._inference_providers()
        provider = providers.get(provider_id)
        if provider is None:
            raise NotFoundError(
                f"No inference provider '{provider_id}' in this distribution (its inference providers: "
                f"{_listing(list(providers))})",
                param="provider_id",
                code="provider_not_found",
            )
        return provider

    @staticmethod
    def _registration(provider: BuiltProvider) -> Callable[[Model], Awaitable[Any]]:
        """The provider's method for a client's model: register_client_model, or a remote provider's
        register_model; a 400 naming the provider when it has neither."""
        named = f"provider '{provider.provider_id}' ({provider.provider_type}, from package {provider.package})"
        plain = getattr(provider.impl, "register_model", None)
        if not callable(plain):
            raise BadRequestError(
                f"{named} has no register_model: it serves the models its own configuration names, none registered",
                param="provider_id",
            )
        checked = getattr(provider.impl, "register_client_model", None)
        if callable(checked):
            return cast(Callable[[Model], Awaitable[Any]], checked)
        if provider.provider_type.startswith("remote::"):
            return cast(Callable[[Model], Awaitable[Any]], plain)
        raise BadRequestError(
            f"{named} loads local files and has no register_client_model to check what a client names; declare its "
            "models in the distribution's YAML instead",
            param="provider_id",
        )

    def _served_names(self) -> dict[str, str]:
        """Every name a request may use now (ids and aliases) -> the model_id it names."""
        return {name: m.model_id for m in self._stack.models for name in (m.model_id, *m.aliases)}

    def _check_names(self, model: Model) -> list[str]:
        names = [model.model_id, *model.aliases]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise BadRequestError(
                f"aliases: {_listing(repeated)} named twice (the model_id and its aliases must differ)", param="aliases"
            )
        served = self._served_names()
        for name in names:
            if name in self._pending:
                raise ConflictError(f"A model named '{name}' is being registered now", param="model_id")
            if name in self._leaving:
                raise ConflictError(f"Model '{name}' is being unregistered now; register it once that is done")
            if name in served:
                owner = served[name]
                what = f"model '{owner}'" if owner == name else f"an alias of model '{owner}'"
                raise ConflictError(
                    f"'{name}' is taken: it is {what} (unregister that first, or choose another name)",
                    param="model_id" if name == model.model_id else "aliases",
                )
        return names

    @staticmethod
    def _check_metadata(model: Model) -> None:
        size = len(json.dumps(model.metadata, separators=(",", ":")).encode())
        if size > MAX_METADATA_BYTES:
            raise BadRequestError(
                f"metadata is {size} bytes of JSON; a registered model's metadata may be at most {MAX_METADATA_BYTES}",
                param="metadata",
            )

    # -- registering -------------------------------------------------------------------------------

    async def register(self, model: Model) -> Model:
        self._check_metadata(model)
        provider = self._provider(model.provider_id)
        register = self._registration(provider)
        names = self._check_names(model)
        self._pending.update(names)  # released by _register, which runs to its end whoever waits for it
        # Shielded: a client that goes away mid-load leaves the model registered and stored, not half of it.
        return await asyncio.shield(self._register(model, provider, register, names))

    async def _register(
        self, model: Model, provider: BuiltProvider, register: Callable[[Model], Awaitable[Any]], names: list[str]
    ) -> Model:
        try:
            log.info("registering model %s on %s", model.model_id, model.provider_id)
            answer = await self._hand_over(model, provider, register)
            try:
                self._store.add(model)
            except BaseException:
                await self._take_back(provider, model.model_id)
                raise
            self._registered.add(model.model_id)
            self._routed.add(model.model_id)
            self._stack.serve_model(answer)
            return answer
        finally:
            self._pending.difference_update(names)

    @staticmethod
    async def _hand_over(model: Model, provider: BuiltProvider, register: Callable[[Model], Awaitable[Any]]) -> Model:
        """The model as the provider serves it; its refusal as a 4xx naming it."""
        try:
            answer = await register(model)
        except LlamaStackError as exc:
            if exc.provider is None:
                exc.provider = provider.provider_id
            raise
        except ValueError as exc:  # a provider's own configuration error (remote::openai-compat's check_models)
            raise BadRequestError(str(exc), provider=provider.provider_id) from None
        except Exception as exc:
            log.exception("provider %s failed to register model %s", provider.provider_id, model.model_id)
            raise ProviderError(
                f"provider '{provider.provider_id}' failed to register model '{model.model_id}': {type(exc).__name__}",
                provider=provider.provider_id,
            ) from None
        if answer is None:
            return model
        if not isinstance(answer, Model) or (answer.model_id, answer.provider_id) != (
            model.model_id,
            model.provider_id,
        ):
            await RuntimeModels._take_back(provider, model.model_id)
            raise ProviderError(
                f"provider '{provider.provider_id}' ({provider.package}) answered register_model('{model.model_id}') "
                "with another model",
                provider=provider.provider_id,
            )
        return answer

    @staticmethod
    async def _take_back(provider: BuiltProvider, model_id: str) -> None:
        unregister = getattr(provider.impl, "unregister_model", None)
        if not callable(unregister):
            return
        try:
            await unregister(model_id)
        except Exception:
            log.exception("provider %s failed to unregister model %s", provider.provider_id, model_id)

    # -- unregistering -----------------------------------------------------------------------------

    async def unregister(self, model_id: str) -> None:
        if model_id in self._pending:
            raise ConflictError(f"Model '{model_id}' is being registered now; unregister it once that is done")
        if model_id in self._leaving:
            raise ConflictError(f"Model '{model_id}' is being unregistered now")
        if model_id not in self._registered:
            raise self._not_registered(model_id)
        self._leaving.add(model_id)  # released by _unregister, which runs to its end whoever waits for it
        # Shielded: a client that goes away mid-way leaves the model gone, not half of it.
        await asyncio.shield(self._unregister(model_id))

    def _not_registered(self, model_id: str) -> LlamaStackError:
        declared = {m.model_id for m in self._stack.config.models}
        if model_id in declared:
            return BadRequestError(
                f"Model '{model_id}' is declared in the distribution ({self._stack.source}); only models registered "
                "through /models/register can be unregistered (remove it from the YAML and restart instead)",
                param="model_id",
            )
        owner = self._served_names().get(model_id)
        if owner is not None and owner != model_id:
            return NotFoundError(f"'{model_id}' is an alias of model '{owner}'; unregister it by its model_id")
        return NotFoundError(
            f"No model '{model_id}' registered at run time (registered: {_listing(list(self._registered))})",
            param="model_id",
            code="model_not_found",
        )

    async def _unregister(self, model_id: str) -> None:
        try:
            served = self.failures.pop(model_id, None) is None
            if model_id in self._routed:
                self._routed.discard(model_id)
                self._stack.unserve_model(model_id)  # new requests for it are 404s from here on
            model = next((m for m in self._store_models() if m.model_id == model_id), None)
            provider = self._inference_providers().get(model.provider_id) if model is not None else None
            if served and provider is not None:
                await self._take_back(provider, model_id)  # a provider failing to let go is logged: it is unrouted
            self._store.remove(model_id)
            self._registered.discard(model_id)
            log.info("model %s unregistered", model_id)
        finally:
            self._leaving.discard(model_id)

    def _store_models(self) -> list[Model]:
        return [stored.model for stored in self._store.models() if stored.model is not None]

    # -- at start ----------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Register the stored models again (after the distribution's own). A model that fails is served as
        failed, with the reason: the start goes on."""
        providers = self._inference_providers()
        for stored in self._store.models():
            self._registered.add(stored.model_id)
            model = stored.model
            if model is None:
                self._fail(stored.model_id, stored.error or "its stored entry cannot be read", None)
                continue
            provider = providers.get(model.provider_id)
            if provider is None:
                reason = (
                    f"its provider '{model.provider_id}' is not an inference provider of this distribution any more "
                    f"(they are: {_listing(list(providers))})"
                )
                self._fail(model.model_id, reason, model)
                continue
            try:
                register = self._registration(provider)
                taken = [name for name in (model.model_id, *model.aliases) if name in self._served_names()]
                if taken:
                    raise ConflictError(f"{_listing(taken)} is now a name of a model the distribution declares")
                answer = await self._hand_over(model, provider, register)
            except LlamaStackError as exc:
                self._fail(model.model_id, exc.message, model)
                continue
            self._routed.add(model.model_id)
            self._stack.serve_model(answer)
            log.info("model %s (registered at run time) is served again", model.model_id)

    def _fail(self, model_id: str, reason: str, model: Model | None) -> None:
        log.error("model %s, registered at run time, could not be registered again: %s", model_id, reason)
        self.failures[model_id] = reason
        served = self._served_names()
        if model is not None and not any(name in served for name in (model.model_id, *model.aliases)):
            self._routed.add(model_id)
            self._stack.serve_model(model, failure=reason)

    def routed_failures(self) -> dict[str, str]:
        """The failed models the stack lists (their calls answer why), by model_id."""
        return {model_id: reason for model_id, reason in self.failures.items() if model_id in self._routed}

    def close(self) -> None:
        self._store.close()
