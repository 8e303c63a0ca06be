"""Routes each inference call to the provider serving the requested model."""

from __future__ import annotations

from typing import Any, AsyncIterator

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
        return await self._provider(request.model).chat_completion(request)

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        return await self._provider(request.model).batch_completion(request)

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        return await self._provider(request.model).batch_chat_completion(request)
