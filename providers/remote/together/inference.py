"""remote::together inference: chat and text completion, embeddings and rerank on Together's hosted models.

Requests are translated per VENDOR-MAPPING.md §1–§2 and sent with the shared :class:`RemoteService`
(keys, retries, error mapping). What Together cannot do is refused before anything is sent: attachments
(its chat API takes text only), more than one logprob alternative per token, ``response_format`` on text
completions. Batches fan out into single calls, ``max_concurrency`` at a time, answered in input order.
See docs/providers/together-inference.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from functools import partial
from typing import Any, TypeVar

from llama_stack.apis.common import Attachment, Content, Role, StopReason
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
    PromptTokenLogprob,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.content import plain_text
from llama_stack.providers.utils.remote.fan_out import fan_out
from llama_stack.providers.utils.remote.openai_answers import (
    ToolCallAssembler,
    choice_zero,
    first_choice,
    stop_reason,
    tool_calls,
    usage_of,
)
from llama_stack.providers.utils.remote.openai_chat import (
    openai_messages,
    openai_response_format,
    openai_tools,
    sampling_fields,
)
from llama_stack.providers.utils.remote.registered_models import registered_model, vendor_model_name

from .config import TogetherInferenceConfig
from .service import together_service

# Together's YAML caps `logprobs` at 1: one logprob per generated token, no further alternatives.
MAX_TOGETHER_LOGPROBS = 1

R = TypeVar("R")


async def build(config: TogetherInferenceConfig, context: ProviderContext) -> TogetherInference:
    return TogetherInference(config, together_service(config, context))


class TogetherInference:
    """Satisfies :class:`llama_stack.apis.inference.Inference` with Together's API."""

    # Completions' prompt_logprobs go through Together's echo (see docs/plugins.md).
    scores_prompts = True

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
        return self._completion_response(answer, _alternatives(request), request.prompt_logprobs is not None)

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
        respond = partial(self._completion_response, scored=request.prompt_logprobs is not None)
        return await self._batch("/completions", bodies, vendor_model, respond, _alternatives(request))

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        vendor_model = self._vendor_model(request.model)
        options = request.model_dump(exclude={"batch_dialogs"})
        singles = [ChatCompletionRequest(dialog=dialog, **options) for dialog in request.batch_dialogs]
        bodies = [
            self._chat_body(single, vendor_model, where=f"batch_dialogs[{index}]")
            for index, single in enumerate(singles)
        ]
        return await self._batch("/chat/completions", bodies, vendor_model, self._chat_response, _alternatives(request))

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
        return vendor_model_name(registered_model(self.models, model_id, self.service))

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
        if request.prompt_logprobs is not None:
            # Together scores the prompt when echo and logprobs are both asked (one logprob per token, no
            # alternatives: those it does not give).
            body.update(echo=True, logprobs=MAX_TOGETHER_LOGPROBS)
        return body

    def _chat_body(self, request: ChatCompletionRequest, vendor_model: str, where: str = "dialog") -> dict[str, Any]:
        # Together's spec requires an index on each call of an assistant message, and content as a string.
        messages = openai_messages(
            request.dialog, self._text, self.service, where=where, numbered_calls=True, no_text=""
        )
        body: dict[str, Any] = {"model": vendor_model, "messages": messages}
        if request.available_tools:
            body["tools"] = openai_tools(request.available_tools)
            # Together takes a function's name as a plain string ("auto", "none", "required" or the name); its
            # object form is not OpenAI's named choice, so openai_tool_choice's is not sent.
            body["tool_choice"] = request.tool_choice
        body.update(self._generation_options(request))
        if request.response_format is not None and request.response_format.type != "text":
            body["response_format"] = openai_response_format(request.response_format)
        return body

    def _generation_options(self, request: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
        # Together takes top_k and repetition_penalty as they are, beside OpenAI's fields.
        options = sampling_fields(request.sampling_params)
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

    def _text(self, content: Content, where: str, role: Role | None = None) -> str:
        # Text whatever the message's role (the RenderContent of openai_messages): Together reads no images.
        return plain_text(content, where, self._no_attachments)

    def _no_attachments(self, attachment: Attachment, where: str) -> BadRequestError:
        return BadRequestError(
            f"{self.service.name} cannot take attachments: Together's chat and completion APIs read text "
            f"only, and {where} is an attachment ({attachment.mime_type}); put its text into the message instead",
            provider=self.service.provider_id,
            param=where,
        )

    # ------------------------------------------------------------------------------------- the calls
    async def _post(self, path: str, body: dict[str, Any], vendor_model: str) -> Any:
        with self._unknown_model(vendor_model):
            return await self.service.json("POST", path, json_body=body)

    async def _open_stream(self, path: str, body: dict[str, Any], vendor_model: str) -> AsyncIterator[Any]:
        with self._unknown_model(vendor_model):
            return await self.service.open_stream("POST", path, json_body=body)

    async def _batch(
        self,
        path: str,
        bodies: list[dict[str, Any]],
        vendor_model: str,
        respond: Callable[[Any, int | None], R],
        top_logprobs: int | None,
    ) -> list[R]:
        """One call per body, ``max_concurrency`` at a time; ``respond(answer, top_logprobs)`` each, in order."""

        async def one(body: dict[str, Any]) -> R:
            return respond(await self._post(path, body, vendor_model), top_logprobs)

        return await fan_out(bodies, one, self.config.max_concurrency)

    @contextmanager
    def _unknown_model(self, vendor_model: str) -> Iterator[None]:
        """Together's 404 for a request as the NotFoundError naming the model; other statuses as they are."""
        try:
            yield
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            raise NotFoundError(
                f"{self.service.name} does not know the model '{vendor_model}' (404): {exc.vendor_message}; check "
                "the model's provider_model_id against Together's model list",
                provider=self.service.provider_id,
            ) from None

    # ------------------------------------------------------------------------------------ the answers
    def _bad_answer(self, what: str) -> ProviderError:
        return ProviderError(f"{self.service.name} answered with {what}", provider=self.service.provider_id)

    def _chat_response(self, answer: Any, top_logprobs: int | None) -> ChatCompletionResponse:
        choice = first_choice(answer, self.service, "POST /chat/completions")
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        return ChatCompletionResponse(
            content=message.get("content") or "",
            tool_calls=tool_calls(message.get("tool_calls")),
            stop_reason=stop_reason(choice.get("finish_reason")),
            logprobs=_logprobs(choice.get("logprobs"), top_logprobs),
            usage=usage_of(answer.get("usage")),
        )

    def _completion_response(self, answer: Any, top_logprobs: int | None, scored: bool = False) -> CompletionResponse:
        choice = first_choice(answer, self.service, "POST /completions")
        return CompletionResponse(
            content=str(choice.get("text") or ""),
            stop_reason=stop_reason(choice.get("finish_reason")),
            logprobs=_logprobs(choice.get("logprobs"), top_logprobs),
            usage=usage_of(answer.get("usage")),
            prompt_logprobs=self._prompt_logprobs(answer) if scored else None,
        )

    def _prompt_logprobs(self, answer: Any) -> list[PromptTokenLogprob]:
        """``prompt[0].logprobs`` of an echoed completion: each prompt token and its logprob (null: none)."""
        prompt = answer.get("prompt")
        part = (
            prompt[0].get("logprobs") if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict) else None
        )
        if not isinstance(part, dict) or not isinstance(part.get("tokens"), list):
            raise self._bad_answer("an echoed completion without the prompt's logprobs (prompt[0].logprobs)")
        tokens, values = part["tokens"], part.get("token_logprobs") or []
        return [
            PromptTokenLogprob(token=str(token), logprob=float(value) if isinstance(value, (int, float)) else None)
            for token, value in zip(tokens, [*values, *[None] * (len(tokens) - len(values))], strict=False)
        ]

    async def _chat_chunks(
        self, events: AsyncIterator[Any], top_logprobs: int | None
    ) -> AsyncIterator[ChatCompletionResponseStreamChunk]:
        calls = ToolCallAssembler()
        finish: Any = None
        usage: Usage | None = None
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if not isinstance(event, dict):
                    raise self._bad_answer(f"a stream event that is not an object: {str(event)[:200]!r}")
                usage = usage_of(event.get("usage")) or usage
                choice = choice_zero(event)
                if choice is None:
                    continue
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                calls.add(delta.get("tool_calls"))
                finish = choice.get("finish_reason") or finish
                text = delta.get("content") or ""
                logprobs = _chunk_logprobs(text, choice.get("logprobs"), top_logprobs)
                if text or logprobs:
                    yield ChatCompletionResponseStreamChunk(
                        text_delta=text, stop_reason=StopReason.not_stopped, logprobs=logprobs
                    )
        for position, call in enumerate(calls.calls()):
            yield ChatCompletionResponseStreamChunk(
                text_delta="", tool_call=call, tool_call_index=position, stop_reason=StopReason.not_stopped
            )
        yield ChatCompletionResponseStreamChunk(text_delta="", stop_reason=stop_reason(finish), usage=usage)

    async def _completion_chunks(
        self, events: AsyncIterator[Any], top_logprobs: int | None
    ) -> AsyncIterator[CompletionResponseStreamChunk]:
        finish: Any = None
        usage: Usage | None = None
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if not isinstance(event, dict):
                    raise self._bad_answer(f"a stream event that is not an object: {str(event)[:200]!r}")
                usage = usage_of(event.get("usage")) or usage
                finish = event.get("finish_reason") or finish
                token = event.get("token") if isinstance(event.get("token"), dict) else {}
                first = choice_zero(event) or {}
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
                    yield CompletionResponseStreamChunk(
                        text_delta=text, stop_reason=StopReason.not_stopped, logprobs=logprobs
                    )
        yield CompletionResponseStreamChunk(text_delta="", stop_reason=stop_reason(finish), usage=usage)


# ---------------------------------------------------------------------------------- request pieces
# ---------------------------------------------------------------------------------- answer pieces
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
        for token, value in zip(tokens, values, strict=False)
        if isinstance(value, (int, float))
    ]
    return Logprobs(content=content)


def _chunk_logprobs(token: str, value: Any, top_logprobs: int | None) -> Logprobs | None:
    # Completion chunks always carry token.logprob; it is only passed on when logprobs were asked for.
    if top_logprobs is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return Logprobs(content=[_token_logprob(token, float(value), top_logprobs)])
