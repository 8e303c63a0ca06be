"""Routes each inference call to the provider serving the requested model, after the checks every model shares.

Inference routes by model like any ``ByModel`` API (see :mod:`.routing`), and also refuses, before a provider
spends time on it, what no model could serve: empty prompts, a max_tokens or a prompt larger than the model's
context window, a model of the wrong type for the route. It adds a model's system prompt to chats. Models
registered while the stack runs join and leave it through :meth:`InferenceRouter.add_model` and
:meth:`InferenceRouter.remove_model`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from llama_stack.apis.common import Content, Dialog, Message, Role
from llama_stack.apis.errors import BadRequestError, NotFoundError, NotSupportedError, ProviderError
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
    Inference,
    RerankRequest,
    RerankResponse,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.registry import Api

from .routing import RoutedProvider, method_missing

# Every inference request names its model.
R = TypeVar(
    "R",
    CompletionRequest,
    ChatCompletionRequest,
    BatchCompletionRequest,
    BatchChatCompletionRequest,
    EmbeddingsRequest,
    RerankRequest,
)

# No tokenizer's token holds more characters than this: a prompt longer than a model's window times this
# cannot fit it, whatever the tokenizer makes of it.
MAX_CHARS_PER_TOKEN = 1024


class InferenceRouter:
    """Satisfies the Inference protocol by forwarding to the provider that serves ``request.model``."""

    def __init__(self, models: list[Model], providers: dict[str, RoutedProvider]):
        self._provider_of = {model.model_id: providers[model.provider_id] for model in models}
        self._model_of = {model.model_id: model for model in models}
        self._system_prompt_of = {model.model_id: model.system_prompt for model in models if model.system_prompt}
        self._model_id_of = {name: model.model_id for model in models for name in (model.model_id, *model.aliases)}
        # Models listed but not served (registered at run time, they failed to load again at start): why.
        self._failure_of: dict[str, str] = {}

    def add_model(self, model: Model, provider: RoutedProvider, failure: str | None = None) -> None:
        """Route ``model`` to ``provider`` from now on (its names must be free); with ``failure``, its calls
        answer 502 saying why it is not served."""
        taken = [name for name in (model.model_id, *model.aliases) if name in self._model_id_of]
        if taken:
            raise ValueError(f"model {model.model_id!r}: {', '.join(taken)} already name a routed model")
        self._provider_of[model.model_id] = provider
        self._model_of[model.model_id] = model
        if model.system_prompt:
            self._system_prompt_of[model.model_id] = model.system_prompt
        for name in (model.model_id, *model.aliases):
            self._model_id_of[name] = model.model_id
        if failure is not None:
            self._failure_of[model.model_id] = failure

    def remove_model(self, model_id: str) -> None:
        """Stop routing ``model_id``: requests naming it (or an alias) are 404s from now on."""
        model = self._model_of.pop(model_id)
        del self._provider_of[model_id]
        self._system_prompt_of.pop(model_id, None)
        self._failure_of.pop(model_id, None)
        for name in (model.model_id, *model.aliases):
            self._model_id_of.pop(name, None)

    def models(self, model_type: str | None = None) -> list[Model]:
        """The served models (only those of ``model_type`` when given): for callers that check a model up front."""
        return [model for model in self._model_of.values() if model_type is None or model.model_type == model_type]

    def model_id(self, name: str) -> str:
        """The model_id a request's ``model`` names (its id or an alias); a 404 listing the served ones."""
        model_id = self._model_id_of.get(name)
        if model_id is None:
            served = ", ".join(sorted(self._model_id_of)) or "none"
            raise NotFoundError(
                f"The model '{name}' is not served by this distribution (served models: {served})",
                param="model",
                code="model_not_found",
            )
        return model_id

    def _resolve(self, request: R, model_type: str = "llm", method: str = "") -> tuple[Inference, R]:
        """The provider serving the request's model, and the request naming the model by its model_id."""
        model_id = self.model_id(request.model)
        model = self._model_of[model_id]
        failure = self._failure_of.get(model_id)
        if failure is not None:
            raise ProviderError(
                f"Model '{model_id}' (registered at run time) could not be loaded again when the server started: "
                f"{failure} (fix that and restart, or unregister it: DELETE /models/unregister)",
                provider=model.provider_id,
            )
        if model.model_type != model_type:
            fitting = ", ".join(sorted(m for m, v in self._model_of.items() if v.model_type == model_type)) or "none"
            raise BadRequestError(
                f"Model '{request.model}' has model_type '{model.model_type}'; this route needs a model of type "
                f"'{model_type}' (served: {fitting})",
                param="model",
            )
        provider = self._provider_of[model_id]
        if method and not callable(getattr(provider.impl, method, None)):
            raise method_missing(Api.inference, method, provider)
        if model_id != request.model:
            request = request.model_copy(update={"model": model_id})
        impl: Inference = provider.impl
        return impl, request

    def _with_system_prompt(self, model_id: str, dialog: Dialog) -> Dialog:
        prompt = self._system_prompt_of.get(model_id)
        messages = [*dialog.message_history, dialog.message]
        if prompt is None or any(m.role == Role.system for m in messages):
            return dialog
        system = Message(role=Role.system, content=prompt)
        return dialog.model_copy(update={"message_history": [system, *dialog.message_history]})

    def _check_prompt_length(self, model_id: str, characters: int, where: str) -> None:
        """A prompt that cannot fit the model's window whatever its tokenizer is refused at once, rather than
        after the provider has spent seconds tokenizing megabytes of it."""
        window = self._model_of[model_id].context_length
        if window is not None and characters > window * MAX_CHARS_PER_TOKEN:
            raise _refuse(
                where,
                f"the prompt is {characters} characters, more than model '{model_id}''s context window of {window} "
                "tokens can hold",
            )

    def _check_max_tokens(self, request: Any) -> None:
        """A max_tokens the model's context window cannot hold (prompt aside) is the client's mistake: a 400,
        before the provider is called. One within the window that the prompt leaves no room for ends where the
        window does (stop_reason max_tokens)."""
        window = self._model_of[request.model].context_length
        if window is not None and request.max_tokens > window:
            raise BadRequestError(
                f"max_tokens {request.max_tokens} is more than model '{request.model}' can generate: its context "
                f"window is {window} tokens, the prompt included",
                param="max_tokens",
            )

    def _check_prompt_scoring(self, provider: Any, request: CompletionRequest | BatchCompletionRequest) -> None:
        """prompt_logprobs only reaches providers that say they score prompts (``scores_prompts = True``)."""
        if request.prompt_logprobs is not None and not getattr(provider, "scores_prompts", False):
            provider_id = self._model_of[request.model].provider_id
            raise NotSupportedError(
                f"Provider '{provider_id}' serving model '{request.model}' cannot score prompts (prompt_logprobs); "
                "serve the model from a provider that can",
                provider=provider_id,
                param="prompt_logprobs",
            )

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        _require_prompt(request.content, "content")
        provider, request = self._resolve(request)
        self._check_max_tokens(request)
        self._check_prompt_length(request.model, _text_length(request.content), "content")
        self._check_prompt_scoring(provider, request)
        return await provider.completion(request)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        _require_dialog(request.dialog, "dialog")
        provider, request = self._resolve(request)
        self._check_max_tokens(request)
        self._check_prompt_length(request.model, _dialog_length(request.dialog), "dialog")
        dialog = self._with_system_prompt(request.model, request.dialog)
        return await provider.chat_completion(request.model_copy(update={"dialog": dialog}))

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        for i, content in enumerate(request.content_batch):
            _require_prompt(content, f"content_batch[{i}]")
        provider, request = self._resolve(request, method="batch_completion")
        self._check_max_tokens(request)
        for i, content in enumerate(request.content_batch):
            self._check_prompt_length(request.model, _text_length(content), f"content_batch[{i}]")
        self._check_prompt_scoring(provider, request)
        return await provider.batch_completion(request)

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        for i, dialog in enumerate(request.batch_dialogs):
            _require_dialog(dialog, f"batch_dialogs[{i}]")
        provider, request = self._resolve(request, method="batch_chat_completion")
        self._check_max_tokens(request)
        for i, dialog in enumerate(request.batch_dialogs):
            self._check_prompt_length(request.model, _dialog_length(dialog), f"batch_dialogs[{i}]")
        dialogs = [self._with_system_prompt(request.model, dialog) for dialog in request.batch_dialogs]
        return await provider.batch_chat_completion(request.model_copy(update={"batch_dialogs": dialogs}))

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        provider, request = self._resolve(request, "embedding", "embeddings")
        return await provider.embeddings(request)

    async def rerank(self, request: RerankRequest) -> RerankResponse:
        provider, request = self._resolve(request, "rerank", "rerank")
        return await provider.rerank(request)


def is_empty_content(content: Content) -> bool:
    """No text and no attachment: "", [] or a list of empty strings."""
    if isinstance(content, str):
        return content == ""
    return isinstance(content, list) and all(part == "" for part in content)


def _text_length(content: Content) -> int:
    """The characters of a content's text (attachments are read later, by the provider)."""
    if isinstance(content, str):
        return len(content)
    return sum(len(part) for part in content if isinstance(part, str)) if isinstance(content, list) else 0


def _dialog_length(dialog: Dialog) -> int:
    return sum(_text_length(m.content) for m in [*dialog.message_history, dialog.message])


def _refuse(where: str, message: str) -> BadRequestError:
    return BadRequestError(
        f"{where}: {message}", param=where, details=[{"loc": where, "in": "body", "message": message}]
    )


def _require_prompt(content: Content, where: str) -> None:
    # Engines cannot start from nothing (llama.cpp asserts on an empty prompt): a 400 before any is asked.
    if is_empty_content(content):
        raise _refuse(where, "the prompt is empty; send the text to complete")


def _require_dialog(dialog: Dialog, where: str) -> None:
    messages = [*dialog.message_history, dialog.message]
    if all(is_empty_content(m.content) and not m.tool_calls and not m.tool_responses for m in messages):
        raise _refuse(where, "every message of the dialog is empty; the model would have nothing to answer")
