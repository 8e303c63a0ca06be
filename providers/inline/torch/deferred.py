"""inline::torch's inference factory: torch and transformers are imported when the first model registers, not at
start-up.

A distribution may run inline::torch only to serve checkpoints its jobs will write (``local`` does): with no
model entry, importing torch and transformers (about two seconds) would only delay every other provider's first
answer. :class:`DeferredTorchInference` is the Inference API of :class:`~.provider.TorchInference`, built on the
first call that needs it (a model registering); until then no request can reach it, since it serves no model.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

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

from .config import TorchConfig

if TYPE_CHECKING:
    from .provider import TorchInference

_PROVIDER_MODULE = "llama_stack.providers.inline.torch.provider"


async def build(config: TorchConfig, context: ProviderContext) -> DeferredTorchInference:
    return DeferredTorchInference(config, context)


class DeferredTorchInference:
    """Builds the torch provider (off the event loop) when a model first registers, then hands every call to it."""

    scores_prompts = True  # as TorchInference: the router hands it completions with prompt_logprobs

    def __init__(self, config: TorchConfig, context: ProviderContext):
        self._config = config
        self._context = context
        self._built: TorchInference | None = None
        self._building = asyncio.Lock()

    async def _provider(self) -> TorchInference:
        async with self._building:
            if self._built is None:
                module = await asyncio.to_thread(importlib.import_module, _PROVIDER_MODULE)
                self._built = await module.build(self._config, self._context)
        return self._built

    # -- models -------------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        return await (await self._provider()).register_model(model)

    async def register_client_model(self, model: Model) -> Model:
        return await (await self._provider()).register_client_model(model)

    async def unregister_model(self, model_id: str) -> None:
        await (await self._provider()).unregister_model(model_id)

    async def shutdown(self) -> None:
        if self._built is not None:
            await self._built.shutdown()

    # -- inference ----------------------------------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        return await (await self._provider()).completion(request)

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        return await (await self._provider()).chat_completion(request)

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        return await (await self._provider()).batch_completion(request)

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        return await (await self._provider()).batch_chat_completion(request)

    def __repr__(self) -> str:
        state: Any = "built" if self._built is not None else "not built yet"
        return f"<inline::torch inference {self._context.provider_id!r}: {state}>"
