"""The APIs a distribution can serve: each one's name and Protocol, in one place.

The server's routes, the OpenAPI document, both clients and the routing between providers are derived from
this table and from what each Protocol's methods declare (their route with ``webmethod``, how calls are routed
between providers with ``dispatch``). Adding an API is a module with its types and Protocol, and a line here.
"""

from __future__ import annotations

import inspect
from enum import Enum
from typing import Any

from .agentic_system import AgenticSystem
from .datasets import Datasets
from .dispatch import Rule, rule_of
from .inference import Inference
from .memory_banks import MemoryBanks
from .post_training import PostTraining
from .reward_scoring import RewardScoring
from .routes import route_of
from .safety import Safety
from .synthetic_data_generation import SyntheticDataGeneration
from .tool_runtime import ToolRuntime


class Api(str, Enum):
    """The APIs a distribution can serve."""

    inference = "inference"
    agentic_system = "agentic_system"
    memory_banks = "memory_banks"
    safety = "safety"
    datasets = "datasets"
    post_training = "post_training"
    reward_scoring = "reward_scoring"
    synthetic_data_generation = "synthetic_data_generation"
    tool_runtime = "tool_runtime"  # extension: runs built-in tools (image_gen, code_interpreter, ...)


PROTOCOLS: dict[Api, type] = {
    Api.inference: Inference,
    Api.agentic_system: AgenticSystem,
    Api.memory_banks: MemoryBanks,
    Api.safety: Safety,
    Api.datasets: Datasets,
    Api.post_training: PostTraining,
    Api.reward_scoring: RewardScoring,
    Api.synthetic_data_generation: SyntheticDataGeneration,
    Api.tool_runtime: ToolRuntime,
}


def dispatch_rules(api: Api) -> dict[str, Rule]:
    """Each routed method of the API's Protocol -> how its calls pick a provider."""
    rules: dict[str, Rule] = {}
    for name, member in inspect.getmembers(PROTOCOLS[api], inspect.isfunction):
        if route_of(member) is None:
            continue
        rule = rule_of(member)
        if rule is None:
            raise TypeError(f"{PROTOCOLS[api].__name__}.{name} declares a route but no dispatch rule")
        rules[name] = rule
    return rules


def protocol_method(api: Api, name: str) -> Any:
    return getattr(PROTOCOLS[api], name)
