"""remote::emissary inference: chat and text completion, embeddings, and fine-tuned models on deployments.

What maps (docs/vendor-mapping.md §1, §2, §4; docs/providers/emissary-inference.md for users):

- chat_completion -> ``POST /v1/chat/completions`` (system/user/assistant messages with string content,
  ``max_tokens``, ``temperature``, ``top_p``, ``top_k``); completion -> ``POST /v1/completions`` (the same
  sampling, ``max_completion_tokens``).
- Emissary does not stream: a streamed request makes one upstream call and yields the whole answer as one
  ``text_delta`` chunk, then a final chunk with the stop reason and usage.
- Batches fan out single calls, at most ``max_concurrency`` at once, answers in input order.
- embeddings -> ``POST /v1/embeddings`` once per text. It takes one ``input`` and a required ``target``; the
  target is the text itself (always an input Emissary accepts) and ``input_embedding`` is the vector.
- What Emissary cannot do (tools, logprobs, stop, seed, response_format, repetition/frequency/presence penalties, logit_bias, attachments,
  tool messages) is refused with a 400 naming the field, before any call. Rerank is not implemented, so
  the router answers 501.

Deployments: a model whose ``metadata.deployment`` is set is served by an Emissary deployment of a
fine-tuned checkpoint. ``register_model`` sets it up, and each request first asks whether it serves (a
retriable 503 when it is starting or being reactivated); ``deployments.py`` does all of that.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llama_stack.apis.common import Attachment, Content, Dialog, Message, Role, StopReason
from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    LlamaStackError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
)
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
    ResponseFormat,
    SamplingParams,
    Usage,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.content import plain_text
from llama_stack.providers.utils.remote.fan_out import fan_out
from llama_stack.providers.utils.remote.openai_answers import first_choice, stop_reason, usage_of
from llama_stack.providers.utils.remote.openai_chat import sampling_fields
from llama_stack.providers.utils.remote.redaction import excerpt
from llama_stack.providers.utils.remote.registered_models import registered_model, vendor_model_name

from .config import EmissaryInferenceConfig
from .deployments import Deployment, Deployments
from .service import emissary_service

log = logging.getLogger(__name__)


async def build(config: EmissaryInferenceConfig, context: ProviderContext) -> EmissaryInference:
    return EmissaryInference(config, emissary_service(config, context), context.provider_id)


# ------------------------------------------------------------------------------------------- the provider
@dataclass
class ServedModel:
    name: str  # what Emissary's `model` field gets: a base model's or a deployment's name
    deployment: Deployment | None = None


class EmissaryInference:
    """The Inference API on Emissary (no rerank: the router answers 501 for it)."""

    def __init__(self, config: EmissaryInferenceConfig, svc: RemoteService, provider_id: str):
        self._config = config
        self._svc = svc
        self._provider_id = provider_id
        self._deployments = Deployments(svc, config, provider_id)
        self._models: dict[str, ServedModel] = {}
        self._base_models: set[str] | None = None

    async def register_model(self, model: Model) -> None:
        if model.model_type == "rerank":
            # Not fatal (the router answers 501 naming the provider), but worth knowing before the first request.
            log.warning(
                "%s: model '%s' is a rerank model, but Emissary has no rerank endpoint: requests to it answer 501; "
                "serve it with remote::together instead",
                self._svc.name,
                model.model_id,
            )
            return
        name = vendor_model_name(model)
        raw = model.metadata.get("deployment")
        if raw is None:
            self._models[model.model_id] = ServedModel(name)
            await self._check_base_model(model, name)
            return
        deployment = self._deployments.declare(model, name, raw)
        self._models[model.model_id] = ServedModel(name, deployment)
        await self._deployments.set_up(deployment)

    async def shutdown(self) -> None:
        await self._svc.aclose()

    # -- inference --

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        body = self._chat_body(request, request.dialog, "dialog")
        response = await self._chat(request.model, body)
        if not request.stream:
            return response
        return _emulated_stream(
            ChatCompletionResponseStreamChunk, response.content, response.stop_reason, response.usage
        )

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        body = self._completion_body(request, request.content, "content")
        response = await self._complete(request.model, body)
        if not request.stream:
            return response
        return _emulated_stream(CompletionResponseStreamChunk, response.content, response.stop_reason, response.usage)

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        # Every dialog is checked before the first call, so a refused one costs nothing upstream.
        bodies = [self._chat_body(request, d, f"batch_dialogs[{i}]") for i, d in enumerate(request.batch_dialogs)]
        await self._ready(request.model)
        return await fan_out(bodies, lambda body: self._chat(request.model, body), self._config.max_concurrency)

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        bodies = [self._completion_body(request, c, f"content_batch[{i}]") for i, c in enumerate(request.content_batch)]
        await self._ready(request.model)
        return await fan_out(bodies, lambda body: self._complete(request.model, body), self._config.max_concurrency)

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        await self._ready(request.model)
        vectors = await fan_out(
            request.contents, lambda text: self._embed(request.model, text), self._config.max_concurrency
        )
        if len({len(v) for v in vectors}) > 1:
            raise ProviderError(
                f"{self._svc.name} answered vectors of different sizes ({sorted({len(v) for v in vectors})}) "
                f"for model '{request.model}'",
                provider=self._provider_id,
            )
        return EmbeddingsResponse(embeddings=vectors)

    # -- one call each --

    async def _chat(self, model_id: str, body: dict[str, Any]) -> ChatCompletionResponse:
        answer = await self._post(model_id, "/v1/chat/completions", body)
        choice = first_choice(answer, self._svc, f"POST /v1/chat/completions for model '{model_id}'")
        raw_message = choice.get("message")
        message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
        content = message.get("content")
        if not content:
            # A refusal comes instead of content; it is what the model said.
            content = message.get("refusal") or choice.get("refusal") or ""
        return ChatCompletionResponse(
            content=str(content), stop_reason=_stop_reason(choice), usage=usage_of(answer.get("usage"))
        )

    async def _complete(self, model_id: str, body: dict[str, Any]) -> CompletionResponse:
        answer = await self._post(model_id, "/v1/completions", body)
        choice = first_choice(answer, self._svc, f"POST /v1/completions for model '{model_id}'")
        return CompletionResponse(
            content=str(choice.get("text") or ""), stop_reason=_stop_reason(choice), usage=usage_of(answer.get("usage"))
        )

    async def _embed(self, model_id: str, text: str) -> list[float]:
        # Emissary compares an input with a required target; the text itself is a target it always accepts.
        body = {"input": text, "target": text, "cosine": False, "manhattan": False, "euclidean": False}
        answer = await self._post(model_id, "/v1/embeddings", body)
        response = answer.get("response") if isinstance(answer, dict) else None
        vector = response.get("input_embedding") if isinstance(response, dict) else None
        if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
            raise ProviderError(
                f"{self._svc.name} answered no input_embedding for model '{model_id}': {excerpt(answer)}",
                provider=self._provider_id,
            )
        return [float(x) for x in vector]

    async def _post(self, model_id: str, path: str, body: dict[str, Any]) -> Any:
        served = await self._ready(model_id)
        try:
            return await self._svc.json("POST", path, json_body={"model": served.name, **body})
        except (VendorStatusError, BadRequestError, ProviderTimeoutError) as exc:
            if served.deployment is not None:
                await self._deployments.after_failure(served.deployment, exc)
            if isinstance(exc, VendorStatusError) and exc.vendor_status == 404:
                raise NotFoundError(
                    f"{self._svc.name} does not know model '{served.name}' (serving model '{model_id}'): "
                    f"{exc.vendor_message}; provider_model_id must be a base model Emissary serves (GET /v1/models) "
                    "or a deployment's name",
                    provider=self._provider_id,
                    code="model_not_found",
                ) from None
            raise

    async def _ready(self, model_id: str) -> ServedModel:
        """The model as served, once its deployment (if it has one) serves; otherwise what the request answers."""
        served = self._served(model_id)
        if served.deployment is not None:
            await self._deployments.ready(served.deployment)
        return served

    # -- requests -> Emissary bodies (refusing what it cannot do) --

    def _chat_body(
        self, request: ChatCompletionRequest | BatchChatCompletionRequest, dialog: Dialog, where: str
    ) -> dict[str, Any]:
        self._served(request.model)
        self._refuse_common(request)
        if request.available_tools:
            raise self._unsupported(
                "available_tools",
                "Emissary has no tool calling",
                "remove available_tools, or serve the model with a provider that calls tools (remote::together, inline::llama-cpp)",
            )
        # tool_choice needs no check: any value but 'auto' and 'none' requires available_tools (validated).
        history = [(m, f"{where}.message_history[{i}]") for i, m in enumerate(dialog.message_history)]
        messages = [self._message(m, at) for m, at in [*history, (dialog.message, f"{where}.message")]]
        # seed and repetition_penalty were refused above: temperature, top_p and top_k are what is sent.
        body: dict[str, Any] = {"messages": messages, **sampling_fields(request.sampling_params)}
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        return body

    def _completion_body(
        self, request: CompletionRequest | BatchCompletionRequest, content: Content, where: str
    ) -> dict[str, Any]:
        self._served(request.model)
        self._refuse_common(request)
        body: dict[str, Any] = {"prompt": self._text(content, where), **sampling_fields(request.sampling_params)}
        if request.max_tokens:
            body["max_completion_tokens"] = request.max_tokens
        return body

    def _refuse_common(self, request: Any) -> None:
        sampling: SamplingParams = request.sampling_params
        if request.logprobs or request.top_logprobs:
            name = "logprobs" if request.logprobs else "top_logprobs"
            raise self._unsupported(
                name,
                "Emissary returns no token log-probabilities",
                "leave logprobs off, or use a provider with logprobs (remote::together, inline::llama-cpp)",
            )
        if request.stop:
            raise self._unsupported(
                "stop", "Emissary has no stop sequences", "remove stop and cut the answer at the stop string yourself"
            )
        response_format: ResponseFormat | None = request.response_format
        if response_format is not None and response_format.type != "text":
            raise self._unsupported(
                "response_format",
                "Emissary cannot constrain its output to JSON",
                "remove response_format and ask for JSON in the prompt, or use a provider with structured output",
            )
        if sampling.seed is not None:
            raise self._unsupported(
                "sampling_params.seed",
                "Emissary has no seed, so its sampling cannot be repeated",
                "remove seed (strategy 'greedy' gives repeatable answers)",
            )
        if sampling.repetition_penalty != 1.0:
            raise self._unsupported(
                "sampling_params.repetition_penalty", "Emissary has no repetition penalty", "leave it at 1.0"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(sampling, name):
                raise self._unsupported(f"sampling_params.{name}", f"Emissary has no {name}", "leave it at 0")
        if sampling.logit_bias:
            raise self._unsupported(
                "sampling_params.logit_bias", "Emissary has no logit bias", "leave logit_bias empty"
            )

    def _message(self, message: Message, where: str) -> dict[str, str]:
        if message.role == Role.tool or message.tool_responses:
            raise self._unsupported(
                f"{where}.role",
                "Emissary's chat has no tool messages (only system, user and assistant)",
                "put the tool's result into a user message",
            )
        if message.tool_calls:
            raise self._unsupported(
                f"{where}.tool_calls", "Emissary's messages carry no tool calls", "send the assistant's text only"
            )
        return {"role": message.role.value, "content": self._text(message.content, f"{where}.content")}

    def _text(self, content: Content, where: str) -> str:
        return plain_text(content, where, self._no_attachments)

    def _no_attachments(self, attachment: Attachment, where: str) -> BadRequestError:
        return self._unsupported(
            where, "Emissary reads plain text only, not attachments", "put the attachment's text into the content"
        )

    def _unsupported(self, param: str, what: str, instead: str) -> BadRequestError:
        return BadRequestError(
            f"{self._svc.name} cannot honour {param}: {what}; {instead}",
            provider=self._provider_id,
            param=param,
            code="unsupported_by_provider",
        )

    # -- models --

    def _served(self, model_id: str) -> ServedModel:
        return registered_model(self._models, model_id, self._svc)

    async def _check_base_model(self, model: Model, name: str) -> None:
        """Warn at start-up when Emissary lists no such base model (a typo fails every request later).

        Only with a configured key (start-up has no request to bring one), and never fatal: the name may
        be a deployment managed outside this stack, and Emissary may be unreachable for now.
        """
        try:
            self._svc.api_key()
        except AuthenticationError:
            return
        if self._base_models is None:
            try:
                listed = await self._svc.json("GET", "/v1/models")
            except LlamaStackError as exc:
                log.warning("%s: could not list base models to check '%s': %s", self._svc.name, name, exc.message)
                return
            self._base_models = {str(m.get("name")) for m in listed or [] if isinstance(m, dict)}
        if name not in self._base_models:
            log.warning(
                "%s: model '%s' names '%s', which is not a base model Emissary lists (%s); requests to it fail "
                "unless it is the name of a deployment",
                self._svc.name,
                model.model_id,
                name,
                ", ".join(sorted(self._base_models)) or "none",
            )


# --------------------------------------------------------------------------------------------- mapping
def _stop_reason(choice: dict[str, Any]) -> StopReason:
    # choices[].stop_reason is the matched stop string, not a reason: only finish_reason counts.
    return stop_reason(choice.get("finish_reason"))


async def _emulated_stream(
    chunk_type: Callable[..., Any], text: Any, stop_reason: StopReason | None, usage: Usage | None
) -> AsyncIterator[Any]:
    """Emissary does not stream: the whole answer as one delta, then the stop reason and usage."""
    yield chunk_type(text_delta=text, stop_reason=StopReason.not_stopped)
    yield chunk_type(text_delta="", stop_reason=stop_reason, usage=usage)
