"""inline::agents: create, run and delete agents; each agent's create request is kept in SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from llama_stack.apis.agentic_system import (
    AgenticSystemCreateRequest,
    AgenticSystemCreateResponse,
    AgenticSystemExecuteRequest,
    AgenticSystemExecuteResponse,
    AgenticSystemExecuteResponseStreamChunk,
)
from llama_stack.apis.errors import ConflictError, NotFoundError
from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext

from .checks import (
    check_agent_bounds,
    check_apis_served,
    check_banks_exist,
    check_model,
    check_tool_responses,
    check_tools_served,
    check_turn_bounds,
)
from .config import AgentsConfig
from .store import AgentStore
from .turn import Turn


class AgentsImpl:
    def __init__(self, config: AgentsConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self.deps: Mapping[Api, Any] = context.deps
        self.store = AgentStore(config.db_path or context.storage_dir / "agents.sqlite")

    async def create_agentic_system(self, request: AgenticSystemCreateRequest) -> AgenticSystemCreateResponse:
        check_agent_bounds(request, self.config)
        model_id = check_model(request, self.deps[Api.inference])
        check_apis_served(request, self.deps)
        if request.executable_tools:
            await check_tools_served(request, self.deps[Api.tool_runtime])
        if request.memory_bank_uuids:
            await check_banks_exist(request, self.deps[Api.memory_banks])
        # provider_id only routed the request here; the stored agent names its model by id.
        agent = request.model_copy(update={"model": model_id, "provider_id": None})
        if not self.store.add(agent):
            raise ConflictError(f"An agent '{request.uuid}' exists already", param="uuid", code="agent_exists")
        return AgenticSystemCreateResponse(agent_uuid=request.uuid)

    def _agent(self, agent_uuid: str, param: str) -> AgenticSystemCreateRequest:
        agent = self.store.get(agent_uuid)
        if agent is None:
            raise NotFoundError(f"No agent '{agent_uuid}'", param=param, code="agent_not_found")
        return agent

    async def execute_agentic_system(
        self, request: AgenticSystemExecuteRequest
    ) -> AgenticSystemExecuteResponse | AsyncIterator[AgenticSystemExecuteResponseStreamChunk]:
        # Everything a request can get wrong is answered before the turn starts (a status, not a stream event).
        check_turn_bounds(request, self.config)
        agent = self._agent(request.agent_uuid, "agent_uuid")
        check_tool_responses(request)
        turn = Turn(agent, request, self.deps, self.config)
        if request.stream:
            return turn.events()
        last = None
        async with aclosing(turn.events()) as events:
            async for event in events:
                last = event
        assert last is not None and last.turn is not None  # the last event carries the turn
        return AgenticSystemExecuteResponse(turn=last.turn)

    async def delete_agentic_system(self, agent_id: str) -> None:
        if not self.store.remove(agent_id):
            raise NotFoundError(f"No agent '{agent_id}'", param="agent_id", code="agent_not_found")


def build(config: AgentsConfig, context: ProviderContext) -> AgentsImpl:
    return AgentsImpl(config, context)
