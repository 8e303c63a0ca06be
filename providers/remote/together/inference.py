"""remote::together inference: chat and text completion, embeddings and rerank on Together's hosted models.

Requests are translated per VENDOR-MAPPING.md §1–§2 and sent with the shared :class:`RemoteService`
(keys, retries, error mapping). What Together cannot do is refused before anything is sent: attachments
(its chat API takes text only), more than one logprob alternative per token, ``response_format`` on text
completions. Batches fan out into single calls, ``max_concurrency`` at a time, answered in input order.
See docs/providers/together-inference.md.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llama_stack.apis.common import Attachment, BuiltinTool, Content, Message, Role, StopReason, ToolCall, ToolDefinition
from llama_stack.apis.errors import BadRequestError, NotFoundError, ProviderError
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    BatchCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseStreamChunk,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Logprobs,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ResponseFormat,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError

from .config import TogetherInferenceConfig
from .service import together_service

# Together's YAML caps `logprobs` at 1: one logprob per generated token, no further alternatives.
MAX_TOGETHER_LOGPROBS = 1

# Invalid JSON in a tool call's arguments is kept under this key, so a caller sees what the model wrote.
RAW_ARGUMENTS_KEY = "raw_arguments"


def _one_argument(name: str, description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}}, "required": [name]}


# The built-in tools have no parameters in the contract; Together needs a JSON Schema for each function.
BUILTIN_FUNCTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    BuiltinTool.web_search.value: ("Search the web.", _one_argument("query", "What to search for.")),
    BuiltinTool.code_interpreter.value: (
        "Run Python code and return its output.",
        _one_argument("code", "The Python code to run."),
    ),
    BuiltinTool.image_gen.value: ("Generate an image.", _one_argument("prompt", "A description of the image.")),
    BuiltinTool.math.value: (
        "Evaluate a mathematical expression.",
        _one_argument("expression", "The expression to evaluate."),
    ),
}

# Together's finish_reason -> ours. The contract has no tool-call stop reason: a call is a normal finish.
FINISH_REASONS: dict[str, StopReason] = {
    "stop": StopReason.finished_ok,
    "eos": StopReason.finished_ok,
    "tool_calls": StopReason.finished_ok,
    "function_call": StopReason.finished_ok,
    "length": StopReason.max_tokens,
}

T = TypeVar("T")
R = TypeVar("R")


async def build(config: TogetherInferenceConfig, context: ProviderContext) -> "TogetherInference":
    return TogetherInference(config, together_service(config, context))


class TogetherInference:
    """Satisfies :class:`llama_stack.apis.inference.Inference` with Together's API."""

    def __init__(self, config: TogetherInferenceConfig, service: RemoteService):
        self.config = config
        self.service = service
        self.models: dict[str, Model] = {}

    # ------------------------------------------------------------------------------------- lifecycle
    async def register_model(self, model: Model) -> None:
        # No call to Together here: the key may only arrive with requests, and an unknown model is a clear
        # 404 on its first use.
        self.models[model.model_id] = model

    async def shutdown(self) -> None:
        await self.service.aclose()

    # ------------------------------------------------------------------------------------ completion
    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        vendor_model = self._vendor_model(request.model)
        body = self._completion_body(request, vendor_model)
        if request.stream:
            events = await self._open_stream("/completions", body, vendor_model)
            return self._completion_chunks(events, _alternatives(request))
        answer = await self._post("/completions", body, vendor_model)
        return self._completion_response(answer, _alternatives(request))

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        vendor_model = self._vendor_model(request.model)
        body = self._chat_body(request, vendor_model)
        if request.stream:
            events = await self._open_stream("/chat/completions", body, vendor_model)
            return self._chat_chunks(events, _alternatives(request))
        answer = await self._post("/chat/completions", body, vendor_model)
        return self._chat_response(answer, _alternatives(request))

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        vendor_model = self._vendor_model(request.model)
        options = request.model_dump(exclude={"content_batch"})
        singles = [CompletionRequest(content=content, **options) for content in request.content_batch]
        # Every prompt is checked before the first call, so a bad one costs no vendor calls.
        bodies = [self._completion_body(single, vendor_model) for single in singles]

        async def one(body: dict[str, Any]) -> CompletionResponse:
            answer = await self._post("/completions", body, vendor_model)
            return self._completion_response(answer, _alternatives(request))

        return await self._fan_out(bodies, one)

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        vendor_model = self._vendor_model(request.model)
        options = request.model_dump(exclude={"batch_dialogs"})
        singles = [ChatCompletionRequest(dialog=dialog, **options) for dialog in request.batch_dialogs]
        bodies = [
            self._chat_body(single, vendor_model, where=f"batch_dialogs[{index}]")
            for index, single in enumerate(singles)
        ]

        async def one(body: dict[str, Any]) -> ChatCompletionResponse:
            answer = await self._post("/chat/completions", body, vendor_model)
            return self._chat_response(answer, _alternatives(request))

        return await self._fan_out(bodies, one)

    # ---------------------------------------------------------------------------- embeddings, rerank
    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        vendor_model = self._vendor_model(request.model)
        answer = await self._post("/embeddings", {"model": vendor_model, "input": list(request.contents)}, vendor_model)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(request.contents):
            got = len(data) if isinstance(data, list) else "no"
            raise self._bad_answer(f"{got} embeddings for {len(request.contents)} texts from POST /embeddings")
        try:
            # Together numbers its answers by `index`; their order in `data` is not promised.
            ordered = sorted(data, key=lambda item: int(item["index"]))
            vectors = [[float(x) for x in item["embedding"]] for item in ordered]
        except (KeyError, TypeError, ValueError):
            raise self._bad_answer("an embedding without index or vector from POST /embeddings") from None
        if [int(item["index"]) for item in ordered] != list(range(len(request.contents))):
            raise self._bad_answer("embedding indexes that do not match the texts from POST /embeddings")
        return EmbeddingsResponse(embeddings=vectors)

    async def rerank(self, request: RerankRequest) -> RerankResponse:
        vendor_model = self._vendor_model(request.model)
        body: dict[str, Any] = {
            "model": vendor_model,
            "query": request.query,
            "documents": list(request.documents),
            "return_documents": False,
        }
        if request.top_n is not None:
            body["top_n"] = request.top_n
        answer = await self._post("/rerank", body, vendor_model)
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise self._bad_answer("no results from POST /rerank")
        ranked: list[RerankResult] = []
        for item in results:
            try:
                index, score = int(item["index"]), float(item["relevance_score"])
            except (KeyError, TypeError, ValueError):
                raise self._bad_answer("a rerank result without index or relevance_score") from None
            if not 0 <= index < len(request.documents):
                raise self._bad_answer(f"a rerank result for document {index} of {len(request.documents)}")
            ranked.append(RerankResult(index=index, relevance_score=score))
        ranked.sort(key=lambda r: -r.relevance_score)  # stable: Together's order breaks ties
        return RerankResponse(results=ranked[: request.top_n] if request.top_n else ranked)

    # -------------------------------------------------------------------------------- request bodies
    def _vendor_model(self, model_id: str) -> str:
        model = self.models.get(model_id)
        if model is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise NotFoundError(
                f"{self.service.name} does not serve model '{model_id}' (it serves: {served})",
                provider=self.service.provider_id,
            )
        return model.provider_model_id or model.model_id

    def _completion_body(self, request: CompletionRequest, vendor_model: str) -> dict[str, Any]:
        if request.response_format is not None and request.response_format.type != "text":
            raise BadRequestError(
                f"{self.service.name} cannot constrain text completions to JSON: Together's /completions has no "
                "response_format; use chat_completion with response_format instead",
                provider=self.service.provider_id,
                param="response_format",
            )
        body: dict[str, Any] = {"model": vendor_model, "prompt": self._text(request.content, "content")}
        body.update(self._generation_options(request))
        return body

    def _chat_body(self, request: ChatCompletionRequest, vendor_model: str, where: str = "dialog") -> dict[str, Any]:
        body: dict[str, Any] = {"model": vendor_model, "messages": self._messages(request, where)}
        if request.available_tools:
            body["tools"] = [_tool(tool) for tool in request.available_tools]
            # Together's tool_choice is a string: "auto", "none", "required" or a function's name.
            body["tool_choice"] = request.tool_choice
        body.update(self._generation_options(request))
        if request.response_format is not None and request.response_format.type != "text":
            body["response_format"] = _response_format(request.response_format)
        return body

    def _generation_options(self, request: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
        options = _sampling(request.sampling_params)
        if request.max_tokens:
            options["max_tokens"] = request.max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        if request.logprobs:
            if request.top_logprobs > MAX_TOGETHER_LOGPROBS:
                raise BadRequestError(
                    f"{self.service.name} returns at most {MAX_TOGETHER_LOGPROBS} logprob per token (Together's "
                    f"logprobs limit), so top_logprobs={request.top_logprobs} cannot be served; ask for "
                    f"top_logprobs 0 or {MAX_TOGETHER_LOGPROBS}",
                    provider=self.service.provider_id,
                    param="top_logprobs",
                )
            options["logprobs"] = MAX_TOGETHER_LOGPROBS
        if request.stream:
            options["stream"] = True
        return options

    def _messages(self, request: ChatCompletionRequest, where: str) -> list[dict[str, Any]]:
        dialog = request.dialog
        ids = _CallIds()
        out: list[dict[str, Any]] = []
        messages = [*dialog.message_history, dialog.message]
        for turn, message in enumerate(messages):
            at = f"{where}.message_history[{turn}]" if turn < len(dialog.message_history) else f"{where}.message"
            out.extend(self._tool_results(message, at, ids))
            text = self._text(message.content, f"{at}.content")
            if message.role == Role.tool:
                continue  # its content, if any, was sent as a tool result above
            entry: dict[str, Any] = {"role": message.role.value, "content": text}
            if message.role == Role.assistant and message.tool_calls:
                entry["tool_calls"] = ids.calls(turn, message.tool_calls)
            out.append(entry)
        return out

    def _tool_results(self, message: Message, at: str, ids: "_CallIds") -> list[dict[str, Any]]:
        """One Together tool message per tool response (and for a tool message's own content)."""
        results: list[dict[str, Any]] = []
        for index, response in enumerate(message.tool_responses):
            where = f"{at}.tool_responses[{index}]"
            call_id = ids.answer(response.call_id, response.tool_name, where, self.service)
            results.append({"role": "tool", "content": self._text(response.content, f"{where}.content"), "tool_call_id": call_id})
        if message.role == Role.tool:
            text = self._text(message.content, f"{at}.content")
            if text or not message.tool_responses:
                call_id = ids.answer(None, None, at, self.service)
                results.append({"role": "tool", "content": text, "tool_call_id": call_id})
        return results

    def _text(self, content: Content, where: str) -> str:
        if isinstance(content, str):
            return content
        parts = [content] if isinstance(content, Attachment) else content
        for index, part in enumerate(parts):
            if isinstance(part, Attachment):
                at = where if isinstance(content, Attachment) else f"{where}[{index}]"
                raise BadRequestError(
                    f"{self.service.name} cannot take attachments: Together's chat and completion APIs read text "
                    f"only, and {at} is an attachment ({part.mime_type}); put its text into the message instead",
                    provider=self.service.provider_id,
                    param=at,
                )
        return "".join(part for part in parts if isinstance(part, str))

    # ------------------------------------------------------------------------------------- the calls
    async def _post(self, path: str, body: dict[str, Any], vendor_model: str) -> Any:
        try:
            return await self.service.json("POST", path, json_body=body)
        except VendorStatusError as exc:
            raise self._unknown_model(exc, vendor_model) from None

    async def _open_stream(self, path: str, body: dict[str, Any], vendor_model: str) -> AsyncIterator[Any]:
        try:
            return await self.service.open_stream("POST", path, json_body=body)
        except VendorStatusError as exc:
            raise self._unknown_model(exc, vendor_model) from None

    def _unknown_model(self, exc: VendorStatusError, vendor_model: str) -> Exception:
        if exc.vendor_status != 404:
            return exc
        return NotFoundError(
            f"{self.service.name} does not know the model '{vendor_model}' (404): {exc.vendor_message}; check the "
            "model's provider_model_id against Together's model list",
            provider=self.service.provider_id,
        )

    async def _fan_out(self, items: list[T], one: Callable[[T], Awaitable[R]]) -> list[R]:
        """``one(item)`` for every item, ``max_concurrency`` at a time; results in input order.

        The first failure cancels the calls still running and is raised: a batch is answered whole or not.
        """
        gate = asyncio.Semaphore(self.config.max_concurrency)

        async def gated(item: T) -> R:
            async with gate:
                return await one(item)

        tasks = [asyncio.ensure_future(gated(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ------------------------------------------------------------------------------------ the answers
    def _bad_answer(self, what: str) -> ProviderError:
        return ProviderError(f"{self.service.name} answered with {what}", provider=self.service.provider_id)

    def _first_choice(self, answer: Any, path: str) -> dict[str, Any]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._bad_answer(f"no choices from POST {path}")
        return choices[0]

    def _chat_response(self, answer: Any, top_logprobs: int | None) -> ChatCompletionResponse:
        choice = self._first_choice(answer, "/chat/completions")
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        calls = [_tool_call(call) for call in message.get("tool_calls") or [] if isinstance(call, dict)]
        return ChatCompletionResponse(
            content=message.get("content") or "",
            tool_calls=calls,
            stop_reason=_stop_reason(choice.get("finish_reason")),
            logprobs=_logprobs(choice.get("logprobs"), top_logprobs),
            usage=_usage(answer.get("usage")),
        )

    def _completion_response(self, answer: Any, top_logprobs: int | None) -> CompletionResponse:
        choice = self._first_choice(answer, "/completions")
        return CompletionResponse(
            content=str(choice.get("text") or ""),
            stop_reason=_stop_reason(choice.get("finish_reason")),
            logprobs=_logprobs(choice.get("logprobs"), top_logprobs),
            usage=_usage(answer.get("usage")),
        )

    async def _chat_chunks(
        self, events: AsyncIterator[Any], top_logprobs: int | None
    ) -> AsyncIterator[ChatCompletionResponseStreamChunk]:
        calls: dict[int, _PartialCall] = {}
        finish: Any = None
        usage: Usage | None = None
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if not isinstance(event, dict):
                    raise self._bad_answer(f"a stream event that is not an object: {str(event)[:200]!r}")
                usage = _usage(event.get("usage")) or usage
                for choice in event.get("choices") or []:
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                    for position, fragment in enumerate(delta.get("tool_calls") or []):
                        if isinstance(fragment, dict):
                            index = _int(fragment.get("index"), default=position)
                            calls.setdefault(index, _PartialCall()).add(fragment)
                    finish = choice.get("finish_reason") or finish
                    text = delta.get("content") or ""
                    logprobs = _chunk_logprobs(text, choice.get("logprobs"), top_logprobs)
                    if text or logprobs:
                        yield ChatCompletionResponseStreamChunk(
                            text_delta=text, stop_reason=StopReason.not_stopped, logprobs=logprobs
                        )
        for position, index in enumerate(sorted(calls)):
            yield ChatCompletionResponseStreamChunk(
                text_delta="", tool_call=calls[index].finish(), tool_call_index=position, stop_reason=StopReason.not_stopped
            )
        yield ChatCompletionResponseStreamChunk(text_delta="", stop_reason=_stop_reason(finish), usage=usage)

    async def _completion_chunks(
        self, events: AsyncIterator[Any], top_logprobs: int | None
    ) -> AsyncIterator[CompletionResponseStreamChunk]:
        finish: Any = None
        usage: Usage | None = None
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if not isinstance(event, dict):
                    raise self._bad_answer(f"a stream event that is not an object: {str(event)[:200]!r}")
                usage = _usage(event.get("usage")) or usage
                finish = event.get("finish_reason") or finish
                token = event.get("token") if isinstance(event.get("token"), dict) else {}
                choices = event.get("choices") or []
                first = choices[0] if choices and isinstance(choices[0], dict) else {}
                finish = first.get("finish_reason") or finish
                # choices[0].text is the visible text; token.text also has special tokens (</s>) it leaves out.
                if "text" in first:
                    text = str(first.get("text") or "")
                else:
                    text = "" if token.get("special") else str(token.get("text") or "")
                # A special token (</s>) is not in the text, so neither is its logprob.
                logprob = None if token.get("special") else token.get("logprob")
                logprobs = _chunk_logprobs(str(token.get("text", text)), logprob, top_logprobs)
                if text or logprobs:
                    yield CompletionResponseStreamChunk(text_delta=text, stop_reason=StopReason.not_stopped, logprobs=logprobs)
        yield CompletionResponseStreamChunk(text_delta="", stop_reason=_stop_reason(finish), usage=usage)


# ---------------------------------------------------------------------------------- request pieces
def _sampling(params: SamplingParams) -> dict[str, Any]:
    if params.strategy == "greedy":
        return {"temperature": 0.0, **_penalty_and_seed(params)}
    options: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
    if params.top_k > 0:
        options["top_k"] = params.top_k
    return {**options, **_penalty_and_seed(params)}


def _penalty_and_seed(params: SamplingParams) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.repetition_penalty != 1.0:
        options["repetition_penalty"] = params.repetition_penalty
    if params.seed is not None:
        options["seed"] = params.seed
    return options


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    name = tool.tool_name.value if isinstance(tool.tool_name, BuiltinTool) else tool.tool_name
    builtin = BUILTIN_FUNCTIONS.get(name)
    description = tool.description or (builtin[0] if builtin else None)
    parameters = tool.parameters or (builtin[1] if builtin else {"type": "object", "properties": {}})
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if description:
        function["description"] = description
    # Shields are the stack's business; they are never sent to Together.
    return {"type": "function", "function": function}


def _response_format(response_format: ResponseFormat) -> dict[str, Any]:
    if response_format.type == "json_object":
        return {"type": "json_object"}
    schema = dict(response_format.json_schema or {})
    # Structured Outputs names the schema; a title is the natural name when there is one.
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "response"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


@dataclass
class _CallIds:
    """Ids for the dialog's tool calls, and which calls are still waiting for their results.

    The contract's ToolCall may carry no id, but Together links each tool message to a call by id: calls
    without one get ``call_<turn>_<i>`` (deterministic, so a request sent twice is the same), and results
    without one answer the call they follow, by tool name, else in order.
    """

    pending: list[tuple[str, str]] = field(default_factory=list)  # (id, tool name), unanswered

    def calls(self, turn: int, calls: list[ToolCall]) -> list[dict[str, Any]]:
        sent = []
        self.pending = []
        for index, call in enumerate(calls):
            call_id = call.call_id or f"call_{turn}_{index}"
            self.pending.append((call_id, call.tool_name))
            sent.append(
                {
                    "id": call_id,
                    "type": "function",
                    "index": index,
                    "function": {"name": call.tool_name, "arguments": json.dumps(call.arguments)},
                }
            )
        return sent

    def answer(self, call_id: str | None, tool_name: str | None, where: str, service: RemoteService) -> str:
        if call_id:
            self.pending = [p for p in self.pending if p[0] != call_id]
            return call_id
        if not self.pending:
            raise BadRequestError(
                f"{service.name} needs every tool result to answer a tool call: {where} follows no assistant "
                "message with tool_calls left unanswered; give the result a call_id, or put the assistant "
                "message with its tool_calls before it",
                provider=service.provider_id,
                param=where,
            )
        position = next((i for i, (_, name) in enumerate(self.pending) if name == tool_name), 0)
        return self.pending.pop(position)[0]


# ---------------------------------------------------------------------------------- answer pieces
@dataclass
class _PartialCall:
    """A streamed tool call, assembled from its fragments (arguments arrive in pieces)."""

    call_id: str | None = None
    name: str = ""
    arguments: str = ""

    def add(self, fragment: dict[str, Any]) -> None:
        function = fragment.get("function") if isinstance(fragment.get("function"), dict) else {}
        self.call_id = self.call_id or fragment.get("id") or None
        self.name = self.name or str(function.get("name") or "")
        self.arguments += str(function.get("arguments") or "")

    def finish(self) -> ToolCall:
        return ToolCall(tool_name=self.name, arguments=_arguments(self.arguments), call_id=self.call_id)


def _tool_call(call: dict[str, Any]) -> ToolCall:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    return ToolCall(
        tool_name=str(function.get("name") or ""),
        arguments=_arguments(function.get("arguments")),
        call_id=call.get("id") or None,
    )


def _arguments(raw: Any) -> dict[str, Any]:
    """A call's arguments as an object; text that is not a JSON object is kept under ``raw_arguments``."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {RAW_ARGUMENTS_KEY: str(raw)}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS_KEY: str(raw)}


def _stop_reason(finish_reason: Any) -> StopReason:
    return FINISH_REASONS.get(str(finish_reason), StopReason.not_stopped) if finish_reason else StopReason.not_stopped


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    try:
        return Usage(prompt_tokens=int(usage["prompt_tokens"]), completion_tokens=int(usage["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def _alternatives(request: Any) -> int | None:
    """How many alternatives each token's logprob entry lists; None when no logprobs were asked for."""
    return request.top_logprobs if request.logprobs else None


def _token_logprob(token: str, logprob: float, top_logprobs: int) -> TokenLogprob:
    # With logprobs: 1 Together reports one entry per position; it is the single alternative asked for.
    top = [TopLogprob(token=token, logprob=logprob)] if top_logprobs >= 1 else []
    return TokenLogprob(token=token, logprob=logprob, top_logprobs=top)


def _logprobs(part: Any, top_logprobs: int | None) -> Logprobs | None:
    """Together's ``LogprobsPart{tokens, token_logprobs}`` as ours (positions without a logprob are left out)."""
    if top_logprobs is None or not isinstance(part, dict):
        return None
    tokens, values = part.get("tokens") or [], part.get("token_logprobs") or []
    content = [
        _token_logprob(str(token), float(value), top_logprobs)
        for token, value in zip(tokens, values)
        if isinstance(value, (int, float))
    ]
    return Logprobs(content=content)


def _chunk_logprobs(token: str, value: Any, top_logprobs: int | None) -> Logprobs | None:
    # Completion chunks always carry token.logprob; it is only passed on when logprobs were asked for.
    if top_logprobs is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return Logprobs(content=[_token_logprob(token, float(value), top_logprobs)])


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
