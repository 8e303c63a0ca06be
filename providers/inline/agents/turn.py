"""One turn of an agent: shields, memory retrieval, model calls and tool round trips, as events while they happen.

:meth:`Turn.events` is an async generator of stream chunks; a non-streaming execute drains it and answers the
turn its last event carries. Closing the generator (a client that went away) closes the model's stream it is
reading, and cancelling it cancels the call in flight: nothing of the turn runs on.

A shield that fails (raises) stops the turn with an error naming the shield and its provider: an answer is
never given unscreened. A tool that fails does not stop the turn: its error is recorded in the step and given
to the model as the tool's response.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import datetime, timezone
from typing import Any, Literal

from llama_stack.apis.agentic_system import (
    AgenticSystemCreateRequest,
    AgenticSystemExecuteRequest,
    AgenticSystemExecuteResponseStreamChunk,
    AgenticSystemTurn,
    ExecutionStep,
    MemoryRetrievalStep,
    ModelInferenceStep,
    SafetyFilteringStep,
    ToolExecutionError,
    ToolExecutionStep,
    TurnStopReason,
)
from llama_stack.apis.common import (
    Content,
    Dialog,
    MemoryBankDocument,
    Message,
    Role,
    ShieldConfig,
    StepType,
    StopReason,
    ToolCall,
    ToolDefinition,
    ToolResponse,
)
from llama_stack.apis.errors import LlamaStackError, ProviderError
from llama_stack.apis.inference import ChatCompletionRequest, ChatCompletionResponse
from llama_stack.apis.memory_banks import MemoryChunk, QueryDocumentsRequest
from llama_stack.apis.registry import Api
from llama_stack.apis.safety import RunShieldRequest
from llama_stack.apis.tool_runtime import ToolInvocationRequest

from .config import AgentsConfig
from .conversation import content_text, history_messages, tool_message

log = logging.getLogger(__name__)

Chunk = AgenticSystemExecuteResponseStreamChunk
Stage = Literal["input", "output"]

DEFAULT_REFUSAL = "I can't help with that."
CONTEXT_HEADER = "Documents retrieved from the agent's memory banks for this question:"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return str(uuid.uuid4())


def tool_name(tool: ToolDefinition | ToolCall) -> str:
    return str(getattr(tool.tool_name, "value", tool.tool_name))


class Turn:
    """The state of one turn while it runs: its steps, its answer and why it stopped."""

    def __init__(
        self,
        agent: AgenticSystemCreateRequest,
        request: AgenticSystemExecuteRequest,
        deps: Mapping[Api, Any],
        config: AgentsConfig,
    ):
        self.agent = agent
        self.request = request
        self.deps = deps
        self.config = config
        self.steps: list[ExecutionStep] = []
        self.answer: Message | None = None
        self.stop_reason: TurnStopReason | None = None
        self.context = ""
        self.tools = {tool_name(tool): tool for tool in agent.available_tools}

    # -- the turn --------------------------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[Chunk, None]:
        """The turn's events; the last one (a step_end) carries the whole turn.

        Each step_end is held until the next event is ready, so that the last can carry the turn; the next
        step's step_start follows at once (nothing is awaited between the two), so nothing arrives later.
        """
        started = _now()
        held: Chunk | None = None
        async with aclosing(self._run()) as chunks:
            async for chunk in chunks:
                if held is not None:
                    yield held
                    held = None
                if chunk.event_type == "step_end":
                    held = chunk
                else:
                    yield chunk
        assert held is not None and self.answer is not None  # every turn ends a step and has an answer
        turn = AgenticSystemTurn(
            user_messages=self.request.messages,
            steps=self.steps,
            response_message=self.answer,
            stop_reason=self.stop_reason,
            started_at=started,
            completed_at=_now(),
        )
        yield held.model_copy(update={"turn": turn})

    async def _run(self) -> AsyncGenerator[Chunk, None]:
        async with aclosing(self._screen("input", self.agent.input_shields, self.request.messages)) as chunks:
            async for chunk in chunks:
                yield chunk
        if self.stop_reason is not None:
            return
        query = self._memory_query()
        if self.agent.memory_bank_uuids and query:
            async with aclosing(self._retrieve(query)) as chunks:
                async for chunk in chunks:
                    yield chunk
        async with aclosing(self._loop()) as chunks:
            async for chunk in chunks:
                yield chunk
        assert self.answer is not None
        async with aclosing(self._screen("output", self.agent.output_shields, [self.answer])) as chunks:
            async for chunk in chunks:
                yield chunk

    # -- events ----------------------------------------------------------------------------------------------

    @staticmethod
    def _event(event_type: str, step_type: StepType, step_uuid: str, **fields: Any) -> Chunk:
        return Chunk(event_type=event_type, step_type=step_type, step_uuid=step_uuid, **fields)  # type: ignore[arg-type]

    def _end(self, step: ExecutionStep, **fields: Any) -> Chunk:
        self.steps.append(step)
        return self._event("step_end", step.step_type, step.uuid, step=step, **fields)

    # -- shields ---------------------------------------------------------------------------------------------

    async def _screen(
        self, stage: Stage, shields: Sequence[ShieldConfig], messages: list[Message]
    ) -> AsyncGenerator[Chunk, None]:
        """Run each shield in order; the first violation ends the turn with the shield's suggested response."""
        for shield in shields:
            step_uuid, started = _new_id(), _now()
            yield self._event("step_start", "safety_filtering", step_uuid)
            violation = await self._run_shield(stage, shield, messages)
            step = SafetyFilteringStep(
                uuid=step_uuid,
                violation=violation,
                shield_type=shield.shield_type,
                stage=stage,
                started_at=started,
                completed_at=_now(),
            )
            yield self._end(step, violation=violation)
            if violation is not None:
                self.answer = Message(role=Role.assistant, content=violation.suggested_user_response or DEFAULT_REFUSAL)
                self.stop_reason = "shield_violation"
                return

    async def _run_shield(self, stage: Stage, shield: ShieldConfig, messages: list[Message]) -> Any:
        request = RunShieldRequest(shield_type=shield.shield_type, messages=messages, params=shield.params)
        what = f"The {stage} shield {shield.shield_type.value}"
        try:
            response = await self.deps[Api.safety].run_shield(request)
        except LlamaStackError as exc:
            provider = exc.provider or self._safety_provider()
            raise type(exc)(
                f"{what}{_by(provider)} failed, so the turn stopped without an unscreened answer: {exc.message}",
                provider=provider,
                code=exc.code or "shield_failed",
                retry_after=exc.retry_after,
            ) from exc
        except Exception as exc:
            provider = self._safety_provider()
            log.exception("%s failed", what)
            raise ProviderError(
                f"{what}{_by(provider)} failed inside the server (see its log), so the turn stopped without an "
                "unscreened answer",
                provider=provider,
                code="shield_failed",
            ) from exc
        return response.violation

    def _safety_provider(self) -> str | None:
        """The safety provider, where the router serves only one (it names itself on its own errors)."""
        providers = getattr(self.deps[Api.safety], "providers", None)
        return next(iter(providers)) if isinstance(providers, Mapping) and len(providers) == 1 else None

    # -- memory ----------------------------------------------------------------------------------------------

    def _memory_query(self) -> str:
        """The end of this turn's user text: what the user asks now (tool responses ask nothing)."""
        text = "\n".join(content_text(m.content) for m in self.request.messages if m.role == Role.user).strip()
        return text[-self.config.max_query_characters :]

    async def _retrieve(self, query: str) -> AsyncGenerator[Chunk, None]:
        step_uuid, started = _new_id(), _now()
        yield self._event("step_start", "memory_retrieval", step_uuid)
        found: list[tuple[str, MemoryChunk]] = []
        for bank in self.agent.memory_bank_uuids:
            answer = await self.deps[Api.memory_banks].query_memory_bank(
                bank_uuid=bank, request=QueryDocumentsRequest(query=query, k=self.config.retrieval_chunks)
            )
            found.extend((bank, chunk) for chunk in answer.chunks)
        found.sort(key=lambda pair: -pair[1].score)
        documents: list[MemoryBankDocument] = []
        scores: list[float] = []
        texts: list[str] = []
        budget = self.config.max_context_characters
        for bank, chunk in found:
            if len(chunk.text) > budget:
                continue
            budget -= len(chunk.text)
            document = MemoryBankDocument(
                uuid=chunk.document_uuid,
                content=base64.b64encode(chunk.text.encode()).decode(),
                mime_type="text/plain",
                metadata={**chunk.metadata, "bank_uuid": bank, "chunk_index": chunk.chunk_index},
            )
            documents.append(document)
            scores.append(chunk.score)
            texts.append(f"[{len(texts) + 1}] (document {chunk.document_uuid})\n{chunk.text}")
            yield self._event("step_progress", "memory_retrieval", step_uuid, retrieved_document=document)
        if texts:
            self.context = CONTEXT_HEADER + "\n\n" + "\n\n".join(texts)
        step = MemoryRetrievalStep(
            uuid=step_uuid, documents=documents, scores=scores, query=query, started_at=started, completed_at=_now()
        )
        yield self._end(step)

    # -- the model and its tools -----------------------------------------------------------------------------

    def _conversation(self) -> list[Message]:
        system = "\n\n".join(part for part in (self.agent.instructions, self.context) if part)
        prefix = [Message(role=Role.system, content=system)] if system else []
        return [*prefix, *history_messages(self.request.turn_history), *self.request.messages]

    async def _loop(self) -> AsyncGenerator[Chunk, None]:
        conversation = self._conversation()
        limit = self.agent.max_iterations or self.config.max_iterations
        for iteration in range(1, limit + 1):
            step = ModelInferenceStep(uuid=_new_id(), text="", started_at=_now())
            async with aclosing(self._infer(conversation, step)) as chunks:
                async for chunk in chunks:
                    yield chunk
            calls = step.tool_calls
            if not calls:
                self._finish(Message(role=Role.assistant, content=step.text), "end_of_turn")
                return
            if iteration == limit:
                # The calls are not run: their answers would reach no model.
                self._finish(Message(role=Role.assistant, content=step.text), "max_iterations")
                return
            conversation.append(Message(role=Role.assistant, content=step.text, tool_calls=calls))
            custom = [
                c for c in calls if tool_name(c) in self.tools and tool_name(c) not in self.agent.executable_tools
            ]
            run_here = [c for c in calls if c not in custom]
            if run_here:
                async with aclosing(self._execute(run_here, conversation)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            if custom:
                self._finish(Message(role=Role.assistant, content=step.text, tool_calls=custom), "client_tool_calls")
                return

    def _finish(self, answer: Message, reason: TurnStopReason) -> None:
        self.answer, self.stop_reason = answer, reason

    async def _infer(self, conversation: list[Message], step: ModelInferenceStep) -> AsyncGenerator[Chunk, None]:
        yield self._event("step_start", "model_inference", step.uuid)
        request = ChatCompletionRequest(
            model=self.agent.model,
            dialog=Dialog(message=conversation[-1], message_history=conversation[:-1]),
            available_tools=self.agent.available_tools,
            max_tokens=self.config.max_tokens,
            stream=True,
        )
        answer = await self.deps[Api.inference].chat_completion(request)
        text: list[str] = []
        calls: list[ToolCall] = []
        stop: StopReason | None = None
        if isinstance(answer, ChatCompletionResponse):  # a provider that does not stream
            text.append(content_text(answer.content))
            calls.extend(_with_call_id(call) for call in answer.tool_calls)
            stop = answer.stop_reason
            if text[0]:
                yield self._event("step_progress", "model_inference", step.uuid, response_text_delta=text[0])
            for call in calls:
                yield self._event("step_progress", "model_inference", step.uuid, tool_call=call)
        else:
            async with closing_stream(answer) as chunks:
                async for chunk in chunks:
                    if chunk.text_delta:
                        text.append(chunk.text_delta)
                        yield self._event(
                            "step_progress", "model_inference", step.uuid, response_text_delta=chunk.text_delta
                        )
                    if chunk.tool_call is not None:
                        call = _with_call_id(chunk.tool_call)
                        calls.append(call)
                        yield self._event("step_progress", "model_inference", step.uuid, tool_call=call)
                    stop = chunk.stop_reason or stop
        step.text, step.tool_calls, step.stop_reason, step.completed_at = "".join(text), calls, stop, _now()
        yield self._end(step, stop_reason=stop)

    async def _execute(self, calls: list[ToolCall], conversation: list[Message]) -> AsyncGenerator[Chunk, None]:
        step = ToolExecutionStep(uuid=_new_id(), tool_calls=calls, started_at=_now())
        yield self._event("step_start", "tool_execution", step.uuid)
        for call in calls:
            yield self._event("step_progress", "tool_execution", step.uuid, tool_call=call)
            content, error = await self._invoke(call)
            if error is not None:
                step.errors.append(ToolExecutionError(tool_name=tool_name(call), call_id=call.call_id, error=error))
            response = ToolResponse(tool_name=tool_name(call), content=content, call_id=call.call_id)
            step.tool_responses.append(response)
            conversation.append(tool_message(response))
            yield self._event("step_progress", "tool_execution", step.uuid, tool_response_delta=response)
        step.completed_at = _now()
        yield self._end(step)

    async def _invoke(self, call: ToolCall) -> tuple[Content, str | None]:
        """The tool's response and, when it failed, its error (which is then the response the model reads)."""
        name = tool_name(call)
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            missing = f"There is no tool named {name!r} (tools: {known})"
            return f"Error: {missing}", missing
        asked = Message(role=Role.assistant, content=json.dumps(call.arguments), tool_calls=[call])
        blocked = await self._tool_shields("input", tool, asked)
        if blocked is not None:
            return f"Error: {blocked}", blocked
        content, error = await self._run_tool(name, call)
        blocked = await self._tool_shields("output", tool, Message(role=Role.tool, content=content_text(content)))
        if blocked is not None:
            return f"Error: {blocked}", blocked
        return content, error

    async def _tool_shields(self, stage: Stage, tool: ToolDefinition, message: Message) -> str | None:
        """A tool's own shields screen its call (input) and its response (output); a violation is the call's
        error, which the model reads instead of the response."""
        for shield in tool.input_shields if stage == "input" else tool.output_shields:
            violation = await self._run_shield(stage, shield, [message])
            if violation is not None:
                return (
                    f"the {stage} shield {shield.shield_type.value} of tool {tool_name(tool)} blocked the "
                    f"{'call' if stage == 'input' else 'response'}: {violation.details}"
                )
        return None

    async def _run_tool(self, name: str, call: ToolCall) -> tuple[Content, str | None]:
        try:
            result = await self.deps[Api.tool_runtime].invoke_tool(
                ToolInvocationRequest(tool_name=name, arguments=call.arguments)
            )
        except LlamaStackError as exc:
            error = f"{name} failed{_by(exc.provider)}: {exc.message}"
            return f"Error: {error}", error
        except Exception:
            log.exception("tool %s failed", name)
            error = f"{name} failed inside the server"
            return f"Error: {error}", error
        text = result.content if result.error is None else f"{result.content}\nError: {result.error}".strip()
        content: Content = [text, *result.attachments] if result.attachments else text
        return content, result.error


def _by(provider: str | None) -> str:
    return f" (provider '{provider}')" if provider else ""


@asynccontextmanager
async def closing_stream(stream: AsyncIterator[Any]) -> AsyncGenerator[AsyncIterator[Any], None]:
    """Closes a provider's stream on the way out, however the turn ends (an async iterator may lack aclose)."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _with_call_id(call: ToolCall) -> ToolCall:
    """Every call gets an id, so that its response (a built-in's, or a client's) names the call it answers."""
    return call if call.call_id else call.model_copy(update={"call_id": f"call_{uuid.uuid4().hex[:16]}"})
