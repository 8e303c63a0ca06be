"""The OpenAI-compatible routes (``llama_stack.apis.openai.OpenAI``), translated onto the Inference API.

``OpenAICompat`` wraps the stack's inference implementation (the ``InferenceRouter``): it maps an OpenAI
request onto a ``ChatCompletionRequest`` / ``CompletionRequest``, calls the router, and maps the answer (or
each streamed chunk) back onto OpenAI's shapes. It holds no state of its own; what it cannot honour it
refuses with a 400 naming the parameter, before any provider is called.
"""

from __future__ import annotations

import base64
import copy
import json
import mimetypes
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any, Literal, Protocol, TypedDict

from pydantic import ValidationError as PydanticValidationError

from llama_stack import __version__
from llama_stack.apis.common import (
    Attachment,
    BuiltinTool,
    Content,
    Dialog,
    Message,
    Role,
    StopReason,
    ToolCall,
    ToolDefinition,
    ToolResponse,
)
from llama_stack.apis.errors import BadRequestError, LlamaStackError
from llama_stack.apis.inference import (
    MIN_SAMPLING_TEMPERATURE,
    BatchChatCompletionRequest,
    BatchCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseStreamChunk,
    EmbeddingsRequest,
    Inference,
    Logprobs,
    PromptTokenLogprob,
    ResponseFormat,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.openai import (
    OpenAIAssistantMessage,
    OpenAIChatChoice,
    OpenAIChatChunkChoice,
    OpenAIChatCompletion,
    OpenAIChatCompletionChunk,
    OpenAIChatCompletionRequest,
    OpenAIChatMessage,
    OpenAIChoiceDelta,
    OpenAIChoiceLogprobs,
    OpenAICompletion,
    OpenAICompletionChoice,
    OpenAICompletionLogprobs,
    OpenAICompletionRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingList,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsUsage,
    OpenAIFunctionCall,
    OpenAIFunctionCallDelta,
    OpenAIModel,
    OpenAIModelList,
    OpenAINamedToolChoice,
    OpenAIResponseFormat,
    OpenAITokenLogprob,
    OpenAIToolCall,
    OpenAIToolCallDelta,
    OpenAITopLogprob,
    OpenAIUsage,
)

from .inference_routing import is_empty_content
from .json_input import load_json

SYSTEM_FINGERPRINT = f"llama-stack-{__version__}"
STARTED = int(time.time())  # OpenAI's `created` of a listed model: when this server began serving it

# Completions' max_tokens when the request has none, as OpenAI's (chat completions run until the model stops).
COMPLETION_MAX_TOKENS = 16


# Every OpenAI route's path starts with it; errors on these paths are answered as OpenAI answers them.
OPENAI_PATH_PREFIX = "/v1/"


def as_openai_error(error: LlamaStackError) -> LlamaStackError:
    """``error`` as OpenAI answers it: a request that does not match the schema is a 400 (OpenAI's SDKs
    raise ``BadRequestError`` for it, where a 422 would be an ``UnprocessableEntityError``), and every
    client error is typed ``invalid_request_error``. Server errors are left as they are."""
    if not 400 <= error.status < 500:
        return error
    converted = copy.copy(error)
    converted.status = 400 if error.status == 422 else error.status
    converted.type = "invalid_request_error"
    return converted


def _openai_model(model: Any) -> OpenAIModel:
    return OpenAIModel(
        id=model.model_id,
        created=STARTED,
        owned_by=model.provider_id,
        aliases=model.aliases,
        context_length=model.context_length,
    )


def _unsupported(param: str, message: str, *, value: bool = False) -> BadRequestError:
    return BadRequestError(message, param=param, code="unsupported_value" if value else "unsupported_parameter")


def _invalid(param: str, message: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="invalid_value")


class ServedInference(Inference, Protocol):
    """The stack's inference implementation (its ``InferenceRouter``): the API, and the models it serves."""

    def models(self, model_type: str | None = None) -> list[Model]: ...

    def model_id(self, name: str) -> str:
        """The served model ``name`` is, or names as an alias; a 404 listing the served models otherwise."""
        ...


class OpenAICompat:
    """Satisfies the ``OpenAI`` protocol on top of the stack's ``InferenceRouter``."""

    def __init__(self, inference: ServedInference):
        self.inference = inference

    def _model_id(self, name: str) -> str:
        return self.inference.model_id(name)

    async def list_models(self) -> OpenAIModelList:
        return OpenAIModelList(data=[_openai_model(m) for m in self.inference.models()])

    async def retrieve_model(self, model: str) -> OpenAIModel:
        # An alias answers with the model it names; anything else is the routes' 404 model_not_found.
        model_id = self._model_id(model)
        return next(_openai_model(m) for m in self.inference.models() if m.model_id == model_id)

    async def create_chat_completion(
        self, request: OpenAIChatCompletionRequest
    ) -> OpenAIChatCompletion | AsyncIterator[OpenAIChatCompletionChunk]:
        model_id = self._model_id(request.model)
        ours = _translated(lambda: _chat_request(request, model_id))
        meta = _Meta("chatcmpl", model_id)
        keep = _tool_call_limit(request)
        n = request.n or 1
        if n > 1 and not request.stream:
            shared = {
                name: getattr(ours, name) for name in BatchChatCompletionRequest.model_fields if name != "batch_dialogs"
            }

            async def chats(dialogs: list[Any], sampling: SamplingParams) -> list[ChatCompletionResponse]:
                batch = BatchChatCompletionRequest(batch_dialogs=dialogs, **{**shared, "sampling_params": sampling})
                return await self.inference.batch_chat_completion(batch)

            results = await _several(chats, [ours.dialog], n, ours.sampling_params)
            return _chat_completion(results, meta, keep, n)
        result = await self.inference.chat_completion(ours)
        if isinstance(result, ChatCompletionResponse):  # not streamed
            return _chat_completion([result], meta, keep, 1)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        if n == 1:
            return _chat_chunks(result, meta, include_usage, keep)
        translate = partial(_chat_chunks, meta=meta, include_usage=True, keep=keep)
        return _streamed_choices(
            result, self.inference.chat_completion, ours, n, include_usage, meta.chat_chunk, translate
        )

    async def create_completion(
        self, request: OpenAICompletionRequest
    ) -> OpenAICompletion | AsyncIterator[OpenAICompletion]:
        model_id = self._model_id(request.model)
        prompts = _prompts(request)
        echo = prompts if request.echo else None
        meta = _Meta("cmpl", model_id)
        n = request.n or 1
        if len(prompts) > 1 or (n > 1 and not request.stream):
            fields = _translated(
                lambda: BatchCompletionRequest(content_batch=[], **_completion_fields(request, model_id))
            )

            async def completions(contents: list[Any], sampling: SamplingParams) -> list[CompletionResponse]:
                batch = fields.model_copy(update={"content_batch": contents, "sampling_params": sampling})
                return await self.inference.batch_completion(batch)

            results = [_as_asked(request, r) for r in await _several(completions, prompts, n, fields.sampling_params)]
            choices = [_completion_choice(i, r, echo[i // n] if echo else None) for i, r in enumerate(results)]
            return meta.completion(choices, _total_usage(results, n))
        single = _translated(
            lambda: CompletionRequest(
                content=prompts[0], stream=bool(request.stream), **_completion_fields(request, model_id)
            )
        )
        result = await self.inference.completion(single)
        if isinstance(result, CompletionResponse):  # not streamed
            answer = _as_asked(request, result)
            return meta.completion([_completion_choice(0, answer, prompts[0] if echo else None)], _usage(answer.usage))
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        echoed = prompts[0] if request.echo else None
        if n == 1:
            return _completion_chunks(result, meta, include_usage, echoed)
        translate = partial(_completion_chunks, meta=meta, include_usage=True, echo=echoed)
        return _streamed_choices(
            result, self.inference.completion, single, n, include_usage, meta.completion, translate
        )

    async def create_embeddings(self, request: OpenAIEmbeddingsRequest) -> OpenAIEmbeddingList:
        model_id = self._model_id(request.model)
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts:
            raise _invalid("input", "input must hold at least one text")
        result = await self.inference.embeddings(_translated(lambda: EmbeddingsRequest(model=model_id, contents=texts)))
        size = len(result.embeddings[0]) if result.embeddings else 0
        if request.dimensions is not None and request.dimensions != size:
            raise _unsupported(
                "dimensions", f"model '{model_id}' embeds into {size} dimensions and cannot shorten them"
            )
        data = [
            OpenAIEmbedding(index=i, embedding=_encode_vector(vector, request.encoding_format))
            for i, vector in enumerate(result.embeddings)
        ]
        # Providers do not report token counts for embeddings; words are the closest honest estimate.
        words = sum(len(text.split()) for text in texts)
        return OpenAIEmbeddingList(
            data=data, model=model_id, usage=OpenAIEmbeddingsUsage(prompt_tokens=words, total_tokens=words)
        )


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class _Meta:
    """What every chunk of one answer shares: id, creation time, model."""

    def __init__(self, prefix: str, model: str):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _common(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model, "system_fingerprint": SYSTEM_FINGERPRINT}

    def chat_chunk(
        self, choices: list[OpenAIChatChunkChoice], usage: OpenAIUsage | None = None
    ) -> OpenAIChatCompletionChunk:
        return OpenAIChatCompletionChunk(choices=choices, usage=usage, **self._common())

    def completion(self, choices: list[OpenAICompletionChoice], usage: OpenAIUsage | None = None) -> OpenAICompletion:
        return OpenAICompletion(choices=choices, usage=usage, **self._common())


def _translated(build: Callable[[], Any]) -> Any:
    """Build one of our requests; a value our contract refuses is the client's 400, not a server error."""
    try:
        return build()
    except PydanticValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in error["loc"]) or None
        raise BadRequestError(
            f"Invalid request: {error['msg'].removeprefix('Value error, ')}", param=loc, code="invalid_value"
        ) from None


# ------------------------------------------------------------------------------------- request mapping


def _refuse_unsupported(request: OpenAIChatCompletionRequest | OpenAICompletionRequest) -> None:
    if request.stream_options is not None and not request.stream:
        raise _invalid("stream_options", "stream_options is only allowed with stream: true")


class _SharedSampling(TypedDict):
    """The sampling parameters that greedy decoding and sampling take alike."""

    seed: int | None
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    logit_bias: dict[int, float]


def _sampling(request: OpenAIChatCompletionRequest | OpenAICompletionRequest) -> SamplingParams:
    """OpenAI samples by default (temperature 1, top_p 1); temperature 0 or top_p 0 is greedy decoding, and so
    is a temperature too small to sample with (below MIN_SAMPLING_TEMPERATURE: nearly greedy at OpenAI too)."""
    temperature = 1.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    common: _SharedSampling = {
        "seed": request.seed,
        "repetition_penalty": request.repetition_penalty or 1.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "presence_penalty": request.presence_penalty or 0.0,
        "logit_bias": _logit_bias(request.logit_bias),
    }
    if temperature < MIN_SAMPLING_TEMPERATURE or top_p == 0:
        return SamplingParams(strategy="greedy", **common)
    top_k = request.top_k or 0
    return SamplingParams(
        strategy="top_k" if top_k else "top_p", temperature=temperature, top_p=top_p, top_k=top_k, **common
    )


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's {"<token id>": bias} with the ids as numbers (the model's own ids: they are passed on as sent)."""
    out = {}
    for token, value in (bias or {}).items():
        if not token.isdigit():
            raise _invalid("logit_bias", f"logit_bias keys are token ids (digits), got {token!r}")
        if not -100 <= value <= 100:
            raise _invalid("logit_bias", f"logit_bias values lie in [-100, 100], got {value} for token {token}")
        out[int(token)] = value
    return out


def _stop(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _response_format(value: OpenAIResponseFormat | None) -> ResponseFormat | None:
    if value is None or value.type == "text":
        return None
    if value.type == "json_schema" and value.json_schema.schema_:
        return ResponseFormat(type="json_schema", json_schema=value.json_schema.schema_)
    return ResponseFormat(type="json_object")


def _text_of_parts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text if part.type == "text" else part.refusal for part in content)


def _image(url: str, param: str) -> Attachment:
    if url.startswith("data:"):
        mime_type = url[5:].split(";", 1)[0].split(",", 1)[0] or "image/*"
    elif url.startswith(("http://", "https://")):
        mime_type = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/*"
    else:
        raise _invalid(param, "an image_url must be an http(s):// or data: URL")
    return Attachment(url=url, mime_type=mime_type)


def _user_content(content: Any, where: str) -> Content:
    if isinstance(content, str) or all(part.type == "text" for part in content):
        return _text_of_parts(content)
    return [
        part.text if part.type == "text" else _image(part.image_url.url, f"{where}.content[{i}].image_url.url")
        for i, part in enumerate(content)
    ]


def _arguments(text: str, param: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    arguments = load_json(
        text, what="The tool call's arguments text", error=lambda message, _: _invalid(param, message)
    )
    if not isinstance(arguments, dict):
        raise _invalid(param, "tool call arguments must be a JSON object")
    return arguments


def _messages(messages: list[OpenAIChatMessage]) -> list[Message]:
    out: list[Message] = []
    tool_of_call: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.audio is not None:
            raise _unsupported(f"{where}.audio", "audio messages are not supported")
        if m.function_call is not None:
            raise _unsupported(f"{where}.function_call", "function_call is not supported; use tool_calls")
        if m.role in ("system", "developer"):
            out.append(Message(role=Role.system, content=_text_of_parts(m.content)))
        elif m.role == "user":
            out.append(Message(role=Role.user, content=_user_content(m.content, where)))
        elif m.role == "assistant":
            calls = []
            for j, call in enumerate(m.tool_calls or []):
                arguments = _arguments(call.function.arguments, f"{where}.tool_calls[{j}].function.arguments")
                calls.append(ToolCall(tool_name=call.function.name, arguments=arguments, call_id=call.id))
                tool_of_call[call.id] = call.function.name
            text = "" if m.content is None else _text_of_parts(m.content)
            out.append(Message(role=Role.assistant, content=text, tool_calls=calls))
        else:  # tool
            name = tool_of_call.get(m.tool_call_id or "")
            if name is None:
                raise _invalid(
                    f"{where}.tool_call_id",
                    f"tool message answers call '{m.tool_call_id}', which no earlier assistant message's tool_calls has",
                )
            text = _text_of_parts(m.content)
            response = ToolResponse(tool_name=name, content=text, call_id=m.tool_call_id)
            out.append(Message(role=Role.tool, content=text, tool_responses=[response]))
    return out


def _tool_choice(request: OpenAIChatCompletionRequest, tools: list[ToolDefinition]) -> str:
    choice = request.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, OpenAINamedToolChoice):
        name = choice.function.name
        if name not in [t.tool_name for t in tools]:
            offered = ", ".join(str(t.tool_name) for t in tools) or "none"
            raise _invalid("tool_choice", f"tool_choice names '{name}', which is not in tools (offered: {offered})")
        return name
    if choice == "required" and not tools:
        raise _invalid("tool_choice", "tool_choice 'required' needs tools")
    return choice


def _chat_request(request: OpenAIChatCompletionRequest, model_id: str) -> ChatCompletionRequest:
    _refuse_unsupported(request)
    for name in ("functions", "function_call"):
        if getattr(request, name) is not None:
            raise _unsupported(
                name, f"{name} is not supported; use {'tools' if name == 'functions' else 'tool_choice'}"
            )
    if request.audio is not None or (request.modalities is not None and request.modalities != ["text"]):
        raise _unsupported("modalities", "only text output is supported (modalities: ['text'])", value=True)
    if request.reasoning_effort is not None:
        raise _unsupported("reasoning_effort", "reasoning_effort is not supported")
    if request.top_logprobs is not None and not request.logprobs:
        raise _invalid("top_logprobs", "top_logprobs needs logprobs: true")
    if request.max_tokens is not None and request.max_completion_tokens not in (None, request.max_tokens):
        raise _invalid("max_tokens", "give max_completion_tokens or max_tokens, not both")
    messages = _messages(request.messages)
    if all(is_empty_content(m.content) and not m.tool_calls and not m.tool_responses for m in messages):
        raise _invalid("messages", "every message is empty; the model would have nothing to answer")
    tools = [
        ToolDefinition(tool_name=t.function.name, description=t.function.description, parameters=t.function.parameters)
        for t in request.tools or []
    ]
    return ChatCompletionRequest(
        model=model_id,
        dialog=Dialog(message=messages[-1], message_history=messages[:-1]),
        sampling_params=_sampling(request),
        available_tools=tools,
        max_tokens=request.max_completion_tokens or request.max_tokens or 0,
        stream=bool(request.stream),
        logprobs=bool(request.logprobs),
        top_logprobs=request.top_logprobs or 0,
        stop=_stop(request.stop),
        response_format=_response_format(request.response_format),
        tool_choice=_tool_choice(request, tools),
    )


def _tool_call_limit(request: OpenAIChatCompletionRequest) -> int | None:
    """parallel_tool_calls: false keeps the first tool call of an answer."""
    return 1 if request.parallel_tool_calls is False else None


def _prompts(request: OpenAICompletionRequest) -> list[str]:
    _refuse_unsupported(request)
    if request.best_of not in (None, 1):
        raise _unsupported("best_of", f"best_of={request.best_of}: only 1 is supported", value=True)
    if request.suffix is not None:
        raise _unsupported("suffix", "suffix (insertion) is not supported")
    if request.echo and request.logprobs is not None and request.stream:
        raise _unsupported("echo", "echo with logprobs is not streamed: ask without stream")
    if request.max_tokens == 0 and (not request.echo or request.stream):
        raise _invalid(
            "max_tokens",
            "max_tokens 0 generates nothing: it is only valid with echo, not streamed (to score the prompt)",
        )
    prompt = request.prompt
    given = [prompt] if isinstance(prompt, str) else prompt
    prompts = [p for p in given if isinstance(p, str)]
    if not prompts or len(prompts) != len(given):
        raise _unsupported("prompt", "prompt must be text (a string or a list of strings); token ids are not supported")
    if request.stream and len(prompts) > 1:
        raise _unsupported("prompt", "a streamed completion takes one prompt", value=True)
    for i, text in enumerate(prompts):
        if text == "":
            raise _invalid(
                "prompt" if isinstance(prompt, str) else f"prompt[{i}]",
                "the prompt is empty; send the text to complete",
            )
    return prompts


def _completion_fields(request: OpenAICompletionRequest, model_id: str) -> dict[str, Any]:
    max_tokens = COMPLETION_MAX_TOKENS if request.max_tokens is None else request.max_tokens
    return {
        "model": model_id,
        "sampling_params": _sampling(request),
        # max_tokens 0 (echo): one token is generated and dropped (_as_asked); 0 means "no limit" to the API.
        "max_tokens": max_tokens or 1,
        "logprobs": request.logprobs is not None,
        "top_logprobs": request.logprobs or 0,
        "stop": _stop(request.stop),
        "response_format": _response_format(request.response_format),
        "prompt_logprobs": request.logprobs if request.echo else None,
    }


def _as_asked(request: OpenAICompletionRequest, result: CompletionResponse) -> CompletionResponse:
    """The result as the request asked for it: with max_tokens 0 (echo), the generated token dropped."""
    if request.max_tokens != 0:
        return result
    usage = result.usage.model_copy(update={"completion_tokens": 0}) if result.usage else None
    logprobs = result.logprobs.model_copy(update={"content": []}) if result.logprobs else None
    return result.model_copy(
        update={"content": "", "logprobs": logprobs, "usage": usage, "stop_reason": StopReason.max_tokens}
    )


# ------------------------------------------------------------------------------------ response mapping


def _text(content: Content) -> str:
    """The text of an answer (attachments in an answer have no OpenAI text form and are left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part for part in content if isinstance(part, str))
    return ""


def _usage(usage: Usage | None) -> OpenAIUsage | None:
    if usage is None:
        return None
    return OpenAIUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


def _total_usage(results: list[Any], n: int) -> OpenAIUsage | None:
    """Every choice's completion tokens; each prompt's tokens once (results hold n choices per prompt)."""
    if not results or any(r.usage is None for r in results):
        return None
    return _usage(
        Usage(
            prompt_tokens=sum(r.usage.prompt_tokens for r in results[::n]),
            completion_tokens=sum(r.usage.completion_tokens for r in results),
        )
    )


async def _several(
    run: Callable[[list[Any], SamplingParams], Awaitable[list[Any]]], items: list[Any], n: int, sampling: SamplingParams
) -> list[Any]:
    """``n`` answers to each item through one batch route, item by item (item i's are at i*n ... i*n+n-1).

    Greedy decoding gives one answer n times (it would give the same each time). Sampling without a seed
    asks for every copy in one batch: rows sample apart. With a seed, copy j samples with seed + j, so the
    choices differ and the first is what the request gives with n: 1.
    """
    if n == 1:
        return await run(items, sampling)
    if sampling.strategy == "greedy":
        return [answer for answer in await run(items, sampling) for _ in range(n)]
    if sampling.seed is None:
        return await run([item for item in items for _ in range(n)], sampling)
    # One round after another: each is a queued job of the model, and n of them at once could fill its queue.
    rounds = [await run(items, _copy_sampling(sampling, j)) for j in range(n)]
    return [rounds[j][i] for i in range(len(items)) for j in range(n)]


def _copy_sampling(sampling: SamplingParams, copy: int) -> SamplingParams:
    """How choice ``copy`` of n samples: with seed + copy when there is a seed, else as asked."""
    return sampling if sampling.seed is None else sampling.model_copy(update={"seed": sampling.seed + copy})


async def _streamed_choices(
    first: Any,
    open_stream: Callable[[Any], Awaitable[Any]],
    request: ChatCompletionRequest | CompletionRequest,
    n: int,
    include_usage: bool,
    usage_chunk: Callable[..., Any],
    translate: Callable[..., AsyncGenerator[Any, None]],
) -> AsyncIterator[Any]:
    """n choices of a streamed ``request`` one after another: choice j's chunks carry index j. ``first`` is
    choice 0's stream, opened already (so that a refused request is a plain error answer); the others are
    opened in turn, sampling as _several's copies do (greedy decoding streams once and repeats the chunks).
    The usage chunk comes last: the prompt counted once, every choice's tokens."""
    sampling = request.sampling_params
    prompt_tokens, completion_tokens, counted = 0, 0, True
    replay: list[Any] = []  # greedy: choice 0's chunks
    replayed_tokens = 0
    stream = first
    for index in range(n):
        if index and sampling.strategy == "greedy":
            for chunk in replay:
                yield chunk.model_copy(
                    update={"choices": [c.model_copy(update={"index": index}) for c in chunk.choices]}
                )
            completion_tokens += replayed_tokens
            continue
        if index:
            stream = await open_stream(request.model_copy(update={"sampling_params": _copy_sampling(sampling, index)}))
        async with aclosing(translate(stream, choice_index=index)) as chunks:
            async for chunk in chunks:
                if not chunk.choices:  # its usage chunk
                    if chunk.usage is None:
                        counted = False
                    else:
                        prompt_tokens, completion_tokens = (
                            chunk.usage.prompt_tokens,
                            completion_tokens + chunk.usage.completion_tokens,
                        )
                        replayed_tokens = chunk.usage.completion_tokens
                    continue
                if sampling.strategy == "greedy":
                    replay.append(chunk)
                yield chunk
    if include_usage:
        usage = OpenAIUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        yield usage_chunk([], usage=usage if counted else None)


def _completion_finish_reason(stop: StopReason | None) -> Literal["stop", "length"]:
    return "length" if stop == StopReason.max_tokens else "stop"


def _chat_finish_reason(stop: StopReason | None, tool_calls: bool) -> Literal["stop", "length", "tool_calls"]:
    if tool_calls and stop != StopReason.max_tokens:
        return "tool_calls"
    return _completion_finish_reason(stop)


def _chat_logprobs(logprobs: Logprobs | None) -> OpenAIChoiceLogprobs | None:
    if logprobs is None:
        return None
    return OpenAIChoiceLogprobs(
        content=[
            OpenAITokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    OpenAITopLogprob(token=a.token, logprob=a.logprob, bytes=list(a.token.encode()))
                    for a in t.top_logprobs
                ],
            )
            for t in logprobs.content
        ]
    )


def _completion_logprobs(
    logprobs: Logprobs | None, offset: int = 0, prompt: list[PromptTokenLogprob] | None = None
) -> OpenAICompletionLogprobs | None:
    """OpenAI's legacy logprobs; an echoed prompt's tokens first (the first one's logprob null, as OpenAI's)."""
    if logprobs is None:
        return None
    entries: list[PromptTokenLogprob | TokenLogprob] = [*(prompt or []), *logprobs.content]
    offsets = []
    for t in entries:
        offsets.append(offset)
        offset += len(t.token)
    return OpenAICompletionLogprobs(
        tokens=[t.token for t in entries],
        token_logprobs=[t.logprob for t in entries],
        top_logprobs=[None if t.logprob is None else {a.token: a.logprob for a in t.top_logprobs} for t in entries],
        text_offset=offsets,
    )


def _tool_name(call: ToolCall) -> str:
    return call.tool_name.value if isinstance(call.tool_name, BuiltinTool) else call.tool_name


def _call_id(call: ToolCall) -> str:
    return call.call_id or f"call_{uuid.uuid4().hex[:24]}"


def _chat_completion(
    results: list[ChatCompletionResponse], meta: _Meta, keep: int | None, n: int
) -> OpenAIChatCompletion:
    return OpenAIChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=[_chat_choice(i, result, keep) for i, result in enumerate(results)],
        usage=_total_usage(results, n),
    )


def _chat_choice(index: int, result: ChatCompletionResponse, keep: int | None) -> OpenAIChatChoice:
    calls = result.tool_calls[:keep]
    tool_calls = [
        OpenAIToolCall(
            id=_call_id(c), function=OpenAIFunctionCall(name=_tool_name(c), arguments=json.dumps(c.arguments))
        )
        for c in calls
    ]
    text = _text(result.content)
    message = OpenAIAssistantMessage(content=text if text or not tool_calls else None, tool_calls=tool_calls or None)
    return OpenAIChatChoice(
        index=index,
        message=message,
        logprobs=_chat_logprobs(result.logprobs),
        finish_reason=_chat_finish_reason(result.stop_reason, bool(tool_calls)),
    )


async def _aclose(chunks: Any) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _chat_chunks(
    chunks: AsyncIterator[ChatCompletionResponseStreamChunk],
    meta: _Meta,
    include_usage: bool,
    keep: int | None,
    choice_index: int = 0,
) -> AsyncGenerator[OpenAIChatCompletionChunk, None]:
    """Our chunks as OpenAI's (choice ``choice_index``): a first chunk with the role, deltas, the finish_reason,
    then the usage if asked."""
    try:
        yield meta.chat_chunk(
            [OpenAIChatChunkChoice(index=choice_index, delta=OpenAIChoiceDelta(role="assistant", content=""))]
        )
        indices: dict[int, int] = {}  # our tool_call_index -> OpenAI's index
        usage: Usage | None = None
        finish: Literal["stop", "length", "tool_calls"] | None = None
        async for chunk in chunks:
            delta = OpenAIChoiceDelta(content=chunk.text_delta or None)
            if chunk.tool_call is not None:
                ours = chunk.tool_call_index if chunk.tool_call_index is not None else len(indices)
                index = indices.setdefault(ours, len(indices))
                if keep is None or index < keep:
                    call = chunk.tool_call
                    delta.tool_calls = [
                        OpenAIToolCallDelta(
                            index=index,
                            id=_call_id(call),
                            type="function",
                            function=OpenAIFunctionCallDelta(
                                name=_tool_name(call), arguments=json.dumps(call.arguments)
                            ),
                        )
                    ]
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.stop_reason is not None and chunk.stop_reason != StopReason.not_stopped:
                finish = _chat_finish_reason(chunk.stop_reason, bool(indices))
            logprobs = _chat_logprobs(chunk.logprobs)
            if delta.content or delta.tool_calls or logprobs or chunk.stop_reason is not None:
                choice = OpenAIChatChunkChoice(index=choice_index, delta=delta, logprobs=logprobs, finish_reason=finish)
                yield meta.chat_chunk([choice])
        if finish is None:  # the provider ended without a stop reason
            yield meta.chat_chunk(
                [
                    OpenAIChatChunkChoice(
                        index=choice_index,
                        delta=OpenAIChoiceDelta(),
                        finish_reason=_chat_finish_reason(None, bool(indices)),
                    )
                ]
            )
        if include_usage:
            yield meta.chat_chunk([], usage=_usage(usage))
    finally:
        await _aclose(chunks)


def _completion_choice(index: int, result: CompletionResponse, echo: str | None) -> OpenAICompletionChoice:
    text = _text(result.content)
    return OpenAICompletionChoice(
        index=index,
        text=(echo + text) if echo else text,
        logprobs=_completion_logprobs(result.logprobs, prompt=result.prompt_logprobs),
        finish_reason=_completion_finish_reason(result.stop_reason),
    )


async def _completion_chunks(
    chunks: AsyncIterator[CompletionResponseStreamChunk],
    meta: _Meta,
    include_usage: bool,
    echo: str | None,
    choice_index: int = 0,
) -> AsyncGenerator[OpenAICompletion, None]:
    try:
        if echo:
            yield meta.completion([OpenAICompletionChoice(index=choice_index, text=echo)])
        usage: Usage | None = None
        finished = False
        offset = 0
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            finish = None
            if chunk.stop_reason is not None and chunk.stop_reason != StopReason.not_stopped:
                finish, finished = _completion_finish_reason(chunk.stop_reason), True
            if chunk.text_delta or chunk.logprobs or chunk.stop_reason is not None:
                logprobs = _completion_logprobs(chunk.logprobs, offset)
                offset += len(chunk.text_delta)
                yield meta.completion(
                    [
                        OpenAICompletionChoice(
                            index=choice_index, text=chunk.text_delta, logprobs=logprobs, finish_reason=finish
                        )
                    ]
                )
        if not finished:
            yield meta.completion([OpenAICompletionChoice(index=choice_index, text="", finish_reason="stop")])
        if include_usage:
            yield meta.completion([], usage=_usage(usage))
    finally:
        await _aclose(chunks)
