"""An inference provider that answers ``prefix + the last user message``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from llama_stack.apis.common import Attachment, Content, Dialog, Role
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
from llama_stack.plugins import ProviderContext

from . import EchoConfig


def _text(content: Content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Attachment):
        return ""
    return "".join(part for part in content if isinstance(part, str))


def _last_user_text(dialog: Dialog) -> str:
    for message in [dialog.message, *reversed(dialog.message_history)]:
        if message.role == Role.user:
            return _text(message.content)
    return ""


class EchoInference:
    def __init__(self, config: EchoConfig, context: ProviderContext):
        self.prefix = config.prefix
        self.provider_id = context.provider_id
        self.models: set[str] = set()

    async def register_model(self, model: Model) -> None:
        self.models.add(model.model_id)

    def _check(self, model_id: str) -> None:
        if model_id not in self.models:
            raise NotFoundError(f"the echo provider does not serve model '{model_id}'", provider=self.provider_id)

    async def _stream(self, text: str, make_chunk: Callable[[str, Any], Any]) -> AsyncIterator[Any]:
        for index, word in enumerate(text.split(" ")):
            yield make_chunk(word if index == 0 else " " + word, None)
        yield make_chunk("", "finished_ok")

    async def completion(self, request: CompletionRequest) -> Any:
        self._check(request.model)
        answer = self.prefix + _text(request.content)
        if request.stream:
            return self._stream(answer, lambda t, s: CompletionResponseStreamChunk(text_delta=t, stop_reason=s))
        return CompletionResponse(content=answer, stop_reason="finished_ok")

    async def chat_completion(self, request: ChatCompletionRequest) -> Any:
        self._check(request.model)
        answer = self.prefix + _last_user_text(request.dialog)
        if request.stream:
            return self._stream(answer, lambda t, s: ChatCompletionResponseStreamChunk(text_delta=t, stop_reason=s))
        return ChatCompletionResponse(content=answer, stop_reason="finished_ok")

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        self._check(request.model)
        return [
            CompletionResponse(content=self.prefix + _text(c), stop_reason="finished_ok") for c in request.content_batch
        ]

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        self._check(request.model)
        return [
            ChatCompletionResponse(content=self.prefix + _last_user_text(d), stop_reason="finished_ok")
            for d in request.batch_dialogs
        ]


def build(config: EchoConfig, context: ProviderContext) -> EchoInference:
    return EchoInference(config, context)
