"""remote::together inference: chat and text completion, embeddings and rerank on Together's hosted models.

Requests are translated per docs/vendor-mapping.md §1–§2 and sent with the shared :class:`RemoteService`
(keys, retries, error mapping). What Together cannot do is refused before anything is sent: attachments
(its chat API takes text only), more than one logprob alternative per token, ``response_format`` on text
completions. Batches fan out into single calls, ``max_concurrency`` at a time, answered in input order.
See docs/providers/together-inference.md.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import contextmanager
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
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.content import plain_text
from llama_stack.providers.utils.remote.fan_out import fan_out
from llama_stack.providers.utils.remote.openai_answers import (
    OpenAIAnswerReader,
    embeddings_of,
    legacy_logprobs,
    legacy_positions,
    prompt_logprobs,
    requested_alternatives,
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
        self.answers = TogetherAnswerReader(service)
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
            return self.answers.completion_chunks(events, requested_alternatives(request))
        answer = await self._post("/completions", body, vendor_model)
        return self._completion_response(answer, requested_alternatives(request), request.prompt_logprobs is not None)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        vendor_model = self._vendor_model(request.model)
        body = self._chat_body(request, vendor_model)
        if request.stream:
            events = await self._open_stream("/chat/completions", body, vendor_model)
            return self.answers.chat_chunks(events, requested_alternatives(request))
        answer = await self._post("/chat/completions", body, vendor_model)
        return self.answers.chat_response(answer, requested_alternatives(request))

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        vendor_model = self._vendor_model(request.model)
        options = request.model_dump(exclude={"content_batch"})
        singles = [CompletionRequest(content=content, **options) for content in request.content_batch]
        # Every prompt is checked before the first call, so a bad one costs no vendor calls.
        bodies = [self._completion_body(single, vendor_model) for single in singles]
        respond = partial(self._completion_response, scored=request.prompt_logprobs is not None)
        return await self._batch("/completions", bodies, vendor_model, respond, requested_alternatives(request))

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        vendor_model = self._vendor_model(request.model)
        options = request.model_dump(exclude={"batch_dialogs"})
        singles = [ChatCompletionRequest(dialog=dialog, **options) for dialog in request.batch_dialogs]
        bodies = [
            self._chat_body(single, vendor_model, where=f"batch_dialogs[{index}]")
            for index, single in enumerate(singles)
        ]
        respond = self.answers.chat_response
        return await self._batch("/chat/completions", bodies, vendor_model, respond, requested_alternatives(request))

    # ---------------------------------------------------------------------------- embeddings, rerank
    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        vendor_model = self._vendor_model(request.model)
        answer = await self._post("/embeddings", {"model": vendor_model, "input": list(request.contents)}, vendor_model)
        return EmbeddingsResponse(
            embeddings=embeddings_of(answer, len(request.contents), self.service, "POST /embeddings")
        )

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

    async def _open_stream(self, path: str, body: dict[str, Any], vendor_model: str) -> AsyncGenerator[Any, None]:
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

    def _completion_response(self, answer: Any, top_logprobs: int | None, scored: bool = False) -> CompletionResponse:
        response = self.answers.completion_response(answer, top_logprobs)
        if not scored:
            return response
        return response.model_copy(update={"prompt_logprobs": self._prompt_logprobs(answer)})

    def _prompt_logprobs(self, answer: Any) -> list[PromptTokenLogprob]:
        """``prompt[0].logprobs`` of an echoed completion: each prompt token and its logprob (null: none).

        Together answers the prompt's tokens beside the choices, not echoed into choice 0's text as OpenAI
        does, and lists no alternatives for them."""
        prompt = answer.get("prompt")
        part = (
            prompt[0].get("logprobs") if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict) else None
        )
        if not isinstance(part, dict) or not isinstance(part.get("tokens"), list):
            raise self._bad_answer("an echoed completion without the prompt's logprobs (prompt[0].logprobs)")
        return prompt_logprobs(legacy_positions(part), 0)


class TogetherAnswerReader(OpenAIAnswerReader):
    """Together's answers: OpenAI's, but for their logprobs and the text of completion stream events."""

    # Together always says why an answer ended; one without a finish_reason did not end.
    unstated_finish = StopReason.not_stopped

    def chat_logprobs(self, part: Any, top: int) -> Logprobs | None:
        # Chat answers carry the legacy LogprobsPart{tokens, token_logprobs} too, not OpenAI's content list.
        return self.completion_logprobs(part, top)

    def completion_logprobs(self, part: Any, top: int) -> Logprobs | None:
        logprobs = legacy_logprobs(part, top)
        if logprobs is None:
            return None
        return Logprobs(content=[_with_itself_as_alternative(entry, top) for entry in logprobs.content])

    def chat_event_logprobs(self, choice: dict[str, Any], text: str, top: int) -> Logprobs | None:
        # A chat stream event's choice carries the logprob of its one token as a number.
        return _single_logprob(text, choice.get("logprobs"), top)

    def completion_event(
        self, event: dict[str, Any], choice: dict[str, Any], top: int | None
    ) -> tuple[str, Logprobs | None]:
        # The event's token{text, logprob, special} beside the choices; choices[0].text is the visible text
        # (token.text also has special tokens such as </s>, which it leaves out).
        sent = event.get("token")
        token: dict[str, Any] = sent if isinstance(sent, dict) else {}
        if "text" in choice:
            text = str(choice.get("text") or "")
        else:
            text = "" if token.get("special") else str(token.get("text") or "")
        if top is None or token.get("special"):  # a special token is not in the text, so neither is its logprob
            return text, None
        return text, _single_logprob(str(token.get("text", text)), token.get("logprob"), top)


# ---------------------------------------------------------------------------------- answer pieces
def _with_itself_as_alternative(entry: TokenLogprob, top: int) -> TokenLogprob:
    # With logprobs: 1 Together reports one entry per position; it is the single alternative asked for.
    if top < 1 or entry.top_logprobs:
        return entry
    return TokenLogprob(
        token=entry.token, logprob=entry.logprob, top_logprobs=[TopLogprob(token=entry.token, logprob=entry.logprob)]
    )


def _single_logprob(token: str, value: Any, top: int) -> Logprobs | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    entry = TokenLogprob(token=token, logprob=float(value))
    return Logprobs(content=[_with_itself_as_alternative(entry, top)])
