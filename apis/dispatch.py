"""How the stack picks the provider for a call, declared beside each protocol method with :func:`dispatch`.

Every API may have several providers in one distribution; a call goes to the one serving what it names:

* :class:`ByModel` — the model a request names (inference, reward scoring): the provider the distribution's
  ``models:`` entry names.
* :class:`ByOwner` — a resource created earlier (a bank, a job, a dataset, an agent): the provider that
  created it. The stack stores each resource's owner, so the answer survives a restart.
* :class:`Creates` — a new resource: the provider the request names in ``provider_id``, else the provider
  serving the request's model (where the rule names a model field), else the API's first provider. Once the
  provider has created it, the stack records it as the owner.
* :class:`ByShield` — a shield: one registered in the distribution's ``shields:`` (by id, or the first of the
  requested type), else the first provider serving the type (its optional ``shield_types`` attribute holds
  it; a provider without one answers for every type itself).
* :class:`ByTool` — a tool: the provider whose ``list_tools`` offers it.
* :class:`AllProviders` — a listing: every provider is asked and the answers are joined.
* :class:`FirstProvider` — a call naming nothing that routes (synthetic data generation): the first provider.

A field is named by its path among the method's parameters: ``"bank_uuid"`` for a parameter,
``"request.job_uuid"`` for a field of the ``request`` body.

``optional=True`` marks a method a provider may leave out; a call to it then answers 501 naming the provider.
Every other method must exist on each provider of the API (checked when the stack starts), except a
:class:`ByModel` method with a ``model_type``, which only the providers serving models of that type need.

This module declares; ``llama_stack.routing`` does the routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DISPATCH_ATTRIBUTE = "__llama_stack_dispatch__"


@dataclass(frozen=True, kw_only=True)
class Rule:
    optional: bool = False


@dataclass(frozen=True, kw_only=True)
class ByModel(Rule):
    field: str = "request.model"
    # The model type the method serves ("llm", "embedding", "rerank"); None: any model the API's providers serve.
    model_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class ByOwner(Rule):
    resource: str = ""  # "bank", "job", "dataset", "agent": one namespace of ids per API and resource
    field: str = ""
    # The call deletes the resource: its owner is forgotten once the provider has answered.
    forgets: bool = False


@dataclass(frozen=True, kw_only=True)
class Creates(Rule):
    resource: str = ""
    # Where the new resource's id is: a request field, or (``from_answer=True``) a field of the answer.
    field: str = ""
    from_answer: bool = False
    provider_field: str | None = None  # the request's optional provider_id
    model_field: str | None = None  # the request's model, whose provider creates the resource


@dataclass(frozen=True, kw_only=True)
class ByShield(Rule):
    shield_id_field: str = "request.shield_id"
    shield_type_field: str = "request.shield_type"


@dataclass(frozen=True, kw_only=True)
class ByTool(Rule):
    field: str = "request.tool_name"


@dataclass(frozen=True, kw_only=True)
class AllProviders(Rule):
    # The id field of a listed item: the stack learns each item's owner from the listing.
    item_field: str | None = None
    resource: str | None = None


@dataclass(frozen=True, kw_only=True)
class FirstProvider(Rule):
    pass


def dispatch(rule: Rule) -> Callable[[F], F]:
    """Declare how a protocol method's calls are routed between an API's providers."""

    def mark(fn: F) -> F:
        setattr(fn, DISPATCH_ATTRIBUTE, rule)
        return fn

    return mark


def rule_of(fn: Callable[..., Any]) -> Rule | None:
    found = getattr(fn, DISPATCH_ATTRIBUTE, None)
    return found if isinstance(found, Rule) else None
