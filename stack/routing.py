"""Routes each inference call to the provider serving the requested model."""

from __future__ import annotations

from typing import Any, AsyncIterator

from llama_stack.apis.common import Dialog, Message, Role
from llama_stack.apis.errors import NotFoundError
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    BatchCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseStreamChunk,
)
from llama_stack.apis.inspect import Model


class InferenceRouter:
    """Satisfies the Inference protocol by forwarding to the provider that serves ``request.model``."""

    def __init__(self, models: list[Model], providers: dict[str, Any]):
        self._provider_of = {model.model_id: providers[model.provider_id] for model in models}
        self._system_prompt_of = {model.model_id: model.system_prompt for model in models if model.system_prompt}

    def _with_system_prompt(self, model_id: str, dialog: Dialog) -> Dialog:
        prompt = self._system_prompt_of.get(model_id)
        messages = [*dialog.message_history, dialog.message]
        if prompt is None or any(m.role == Role.system for m in messages):
            return dialog
        system = Message(role=Role.system, content=prompt)
        return dialog.model_copy(update={"message_history": [system, *dialog.message_history]})

    def _provider(self, model_id: str) -> Any:
        provider = self._provider_of.get(model_id)
        if provider is None:
            served = ", ".join(sorted(self._provider_of)) or "none"
            raise NotFoundError(f"Model '{model_id}' is not served by this distribution (served models: {served})")
        return provider

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        return await self._provider(request.model).completion(request)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        provider = self._provider(request.model)
        dialog = self._with_system_prompt(request.model, request.dialog)
        return await provider.chat_completion(request.model_copy(update={"dialog": dialog}))

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        return await self._provider(request.model).batch_completion(request)

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        provider = self._provider(request.model)
        dialogs = [self._with_system_prompt(request.model, dialog) for dialog in request.batch_dialogs]
        return await provider.batch_chat_completion(request.model_copy(update={"batch_dialogs": dialogs}))
