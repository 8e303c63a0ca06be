"""Inference: completion and chat completion, streaming and batched."""

from __future__ import annotations

from typing import AsyncIterator, Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from .common import Content, Dialog, JsonObject, Schema, StopReason, ToolCall, ToolDefinition
from .routes import webmethod


class SamplingParams(Schema):
    """How the next token is chosen.

    ``greedy`` always takes the most likely token; ``top_p`` and ``top_k`` sample with ``temperature``
    (which must then be above 0), restricted to the nucleus ``top_p`` and, when ``top_k`` > 0, to the
    ``top_k`` most likely tokens.
    """

    temperature: float = Field(default=0.0, ge=0.0)
    strategy: Literal["greedy", "top_p", "top_k"] = "greedy"
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 means no top-k restriction.")

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> "SamplingParams":
        if self.strategy == "greedy" and self.temperature > 0:
            raise ValueError(
                f"temperature={self.temperature} has no effect with strategy 'greedy'; "
                "use strategy 'top_p' or 'top_k' to sample"
            )
        if self.strategy != "greedy" and self.temperature == 0:
            raise ValueError(f"strategy {self.strategy!r} samples and needs a temperature above 0")
        return self


MaxTokens = Field(default=0, ge=0, description="The most tokens to generate; 0 means until the model stops.")


class CompletionRequest(Schema):
    content: Content
    model: str = Field(description="A model id the distribution serves.")
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    max_tokens: int = MaxTokens
    stream: bool = False
    logprobs: bool = False


class CompletionResponse(Schema):
    """Normal completion response."""

    content: Content
    stop_reason: StopReason | None = None
    logprobs: JsonObject | None = None


class CompletionResponseStreamChunk(Schema):
    """streamed completion response."""

    text_delta: str
    stop_reason: StopReason | None = None
    logprobs: JsonObject | None = None


class ChatCompletionRequest(Schema):
    model: str = Field(description="A model id the distribution serves.")
    dialog: Dialog
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    available_tools: list[ToolDefinition] = Field(default_factory=list)
    max_tokens: int = MaxTokens
    stream: bool = False
    logprobs: bool = False


class ChatCompletionResponse(Schema):
    """Normal chat completion response."""

    content: Content
    tool_calls: list[ToolCall] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    logprobs: JsonObject | None = None


class ChatCompletionResponseStreamChunk(Schema):
    """Streamed chat completion response. The actual response is a series of such objects."""

    text_delta: str
    stop_reason: StopReason | None = None
    tool_call: ToolCall | None = None


class BatchCompletionRequest(Schema):
    model: str
    content_batch: list[Content]
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    max_tokens: int = MaxTokens
    logprobs: bool = False


class BatchChatCompletionRequest(Schema):
    model: str
    batch_dialogs: list[Dialog]
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    available_tools: list[ToolDefinition] = Field(default_factory=list)
    max_tokens: int = MaxTokens
    logprobs: bool = False


@runtime_checkable
class Inference(Protocol):
    @webmethod("POST", "/inference/completion", streams=True)
    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        """Complete a text prompt; with ``stream: true`` the answer arrives as chunks."""
        ...

    @webmethod("POST", "/inference/chat_completion", streams=True)
    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        """Answer the next assistant message of a dialog; with ``stream: true`` it arrives as chunks."""
        ...

    @webmethod("POST", "/inference/batch_completion", response_format="jsonl")
    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        """Complete several prompts; one response per prompt, in input order."""
        ...

    @webmethod("POST", "/inference/batch_chat_completion", response_format="jsonl")
    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        """Answer several dialogs; one response per dialog, in input order."""
        ...
