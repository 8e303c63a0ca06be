"""Inference: completion and chat completion, streaming and batched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from .common import BuiltinTool, Content, Dialog, JsonObject, Schema, StopReason, ToolCall, ToolDefinition
from .dispatch import ByModel, dispatch
from .routes import webmethod

# Fields marked "extension" are this runtime's additions to the seed contract; all are optional.


# Bounds of the sampling parameters: OpenAI's ranges where OpenAI has the parameter, and everywhere values
# whose arithmetic stays finite in the engines' float32 logits (a temperature of 1e-300 is 0 there).
MAX_TEMPERATURE = 2.0
MIN_SAMPLING_TEMPERATURE = 0.01
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0
MAX_TOP_K = 1_000_000
MAX_TOKEN_ID = 2**31 - 1  # token ids are 32-bit in the engines
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's: a 64-bit integer
MAX_BATCH = 256  # one batch holds a model's queue place: bounded like OpenAI's n (128) and batch endpoints
MAX_RERANK_DOCUMENTS = 1024
MAX_TOKENS_LIMIT = 2**20  # beyond any model's context window; the router checks the model's own


class SamplingParams(Schema):
    """How the next token is chosen.

    ``greedy`` always takes the most likely token; ``top_p`` and ``top_k`` sample with ``temperature``
    (which must then be at least 0.01), restricted to the nucleus ``top_p`` and, when ``top_k`` > 0, to the
    ``top_k`` most likely tokens.
    """

    temperature: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_TEMPERATURE,
        description=f"0 with greedy; {MIN_SAMPLING_TEMPERATURE} to {MAX_TEMPERATURE} when sampling (OpenAI's range).",
    )
    strategy: Literal["greedy", "top_p", "top_k"] = "greedy"
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K, description="0 means no top-k restriction.")
    repetition_penalty: float = Field(
        default=1.0,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description=f"Extension: 1.0 means no penalty; {MIN_REPETITION_PENALTY} to {MAX_REPETITION_PENALTY}.",
    )
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description="Extension: subtracted from a token's logit once for each time the answer already holds it (OpenAI's).",
    )
    presence_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description="Extension: subtracted from a token's logit once the answer holds it (OpenAI's).",
    )
    seed: int | None = Field(
        default=None,
        ge=SEED_RANGE[0],
        le=SEED_RANGE[1],
        description="Extension: makes sampling repeatable (a 64-bit integer).",
    )
    logit_bias: dict[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)], Annotated[float, Field(ge=-100.0, le=100.0)]] = (
        Field(
            default_factory=dict,
            max_length=1024,
            description=(
                "Extension: token id (the model's own) -> a bias added to that token's logit before sampling, as "
                "OpenAI's logit_bias: -100 bans the token, 100 all but forces it."
            ),
        )
    )

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> SamplingParams:
        if self.strategy == "greedy" and self.temperature > 0:
            raise ValueError(
                f"temperature={self.temperature} has no effect with strategy 'greedy'; "
                "use strategy 'top_p' or 'top_k' to sample"
            )
        if self.strategy != "greedy" and self.temperature == 0:
            raise ValueError(f"strategy {self.strategy!r} samples and needs a temperature above 0")
        if self.strategy != "greedy" and self.temperature < MIN_SAMPLING_TEMPERATURE:
            raise ValueError(
                f"strategy {self.strategy!r} samples with a temperature of at least {MIN_SAMPLING_TEMPERATURE}, "
                f"got {self.temperature}; use strategy 'greedy' for the most likely tokens"
            )
        return self


MaxTokens = Field(
    default=0,
    ge=0,
    le=MAX_TOKENS_LIMIT,
    description="The most tokens to generate; 0 means until the model stops. More than the model's context window is a 400.",
)
MAX_STOP_LENGTH = 256  # characters; the engines look for a stop string after every token
StopString = Annotated[str, Field(max_length=MAX_STOP_LENGTH)]
Stop: list[str] = Field(
    default_factory=list,
    max_length=8,
    description=f"Extension: stop when any of these strings (at most 8, {MAX_STOP_LENGTH} characters each) is generated.",
)
TopLogprobs = Field(default=0, ge=0, le=20, description="Extension: with logprobs, the alternatives per token.")


class ResponseFormat(Schema):
    """Extension: constrains the answer to JSON, or to JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonObject | None = Field(default=None, description="The JSON Schema, for type json_schema.")

    @model_validator(mode="after")
    def _schema_matches_type(self) -> ResponseFormat:
        if self.type == "json_schema" and not self.json_schema:
            raise ValueError("type 'json_schema' needs a json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only read with type 'json_schema', not {self.type!r}")
        return self


class TopLogprob(Schema):
    token: str
    logprob: float


class TokenLogprob(Schema):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list, description="The most likely alternatives.")


class Logprobs(Schema):
    """One entry per generated token, in order."""

    content: list[TokenLogprob]


class PromptTokenLogprob(Schema):
    """Extension: one token of the prompt, with its log-probability given the tokens before it. The first
    token has none when nothing precedes it (a model that adds a beginning-of-text token gives it one)."""

    token: str
    logprob: float | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list, description="The most likely tokens at its place.")


PromptLogprobs = Field(
    default=None,
    ge=0,
    le=20,
    description=(
        "Extension: also score the prompt: each of its tokens with its log-probability and this many "
        "alternatives (0: none). The tokens join to the prompt's text. Not with stream."
    ),
)


class Usage(Schema):
    """Extension: token counts of a request."""

    prompt_tokens: int
    completion_tokens: int


class CompletionRequest(Schema):
    content: Content
    model: str = Field(description="A model id the distribution serves.")
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    max_tokens: int = MaxTokens
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int = TopLogprobs
    stop: list[StopString] = Stop
    response_format: ResponseFormat | None = None
    prompt_logprobs: int | None = PromptLogprobs

    @model_validator(mode="after")
    def _prompt_logprobs_not_streamed(self) -> CompletionRequest:
        if self.stream and self.prompt_logprobs is not None:
            raise ValueError("prompt_logprobs cannot be streamed: ask without stream")
        return self


class CompletionResponse(Schema):
    """Normal completion response."""

    content: Content
    stop_reason: StopReason | None = None
    logprobs: Logprobs | None = None
    usage: Usage | None = None
    prompt_logprobs: list[PromptTokenLogprob] | None = Field(default=None, description="Extension: when asked for.")


class CompletionResponseStreamChunk(Schema):
    """streamed completion response."""

    text_delta: str
    stop_reason: StopReason | None = None
    logprobs: Logprobs | None = None
    usage: Usage | None = Field(default=None, description="Extension: on the last chunk.")


def _check_tool_choice(tool_choice: str, tools: list[ToolDefinition]) -> None:
    names = [t.tool_name.value if isinstance(t.tool_name, BuiltinTool) else t.tool_name for t in tools]
    if tool_choice in ("auto", "none"):
        return
    if not tools:
        raise ValueError(f"tool_choice {tool_choice!r} needs available_tools")
    if tool_choice != "required" and tool_choice not in names:
        raise ValueError(
            f"tool_choice must be 'auto', 'required', 'none' or a tool in available_tools ({', '.join(names)}); "
            f"got {tool_choice!r}"
        )


ToolChoice = Field(
    default="auto",
    description="Extension: 'auto' (the model decides), 'required' (some tool), 'none', or one tool's name.",
)


class ChatCompletionRequest(Schema):
    model: str = Field(description="A model id the distribution serves.")
    dialog: Dialog
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    available_tools: list[ToolDefinition] = Field(default_factory=list)
    max_tokens: int = MaxTokens
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int = TopLogprobs
    stop: list[StopString] = Stop
    response_format: ResponseFormat | None = None
    tool_choice: str = ToolChoice

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        _check_tool_choice(self.tool_choice, self.available_tools)
        return self


class ChatCompletionResponse(Schema):
    """Normal chat completion response."""

    content: Content
    tool_calls: list[ToolCall] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    logprobs: Logprobs | None = None
    usage: Usage | None = None


class ChatCompletionResponseStreamChunk(Schema):
    """Streamed chat completion response. The actual response is a series of such objects."""

    text_delta: str
    stop_reason: StopReason | None = None
    tool_call: ToolCall | None = None
    tool_call_index: int | None = Field(default=None, description="Extension: the tool call's place in the answer.")
    logprobs: Logprobs | None = Field(default=None, description="Extension: the logprobs of this chunk's tokens.")
    usage: Usage | None = Field(default=None, description="Extension: on the last chunk.")


class BatchCompletionRequest(Schema):
    model: str
    content_batch: list[Content] = Field(
        max_length=MAX_BATCH, description=f"At most {MAX_BATCH} prompts, answered in order."
    )
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    max_tokens: int = MaxTokens
    logprobs: bool = False
    top_logprobs: int = TopLogprobs
    stop: list[StopString] = Stop
    response_format: ResponseFormat | None = None
    prompt_logprobs: int | None = PromptLogprobs


class BatchChatCompletionRequest(Schema):
    model: str
    batch_dialogs: list[Dialog] = Field(
        max_length=MAX_BATCH, description=f"At most {MAX_BATCH} dialogs, answered in order."
    )
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    available_tools: list[ToolDefinition] = Field(default_factory=list)
    max_tokens: int = MaxTokens
    logprobs: bool = False
    top_logprobs: int = TopLogprobs
    stop: list[StopString] = Stop
    response_format: ResponseFormat | None = None
    tool_choice: str = ToolChoice

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> BatchChatCompletionRequest:
        _check_tool_choice(self.tool_choice, self.available_tools)
        return self


class EmbeddingsRequest(Schema):
    """Extension: embed texts with an embedding model."""

    model: str = Field(description="An embedding model id the distribution serves.")
    contents: list[str] = Field(min_length=1, max_length=2048, description="The texts to embed, one vector each.")


class EmbeddingsResponse(Schema):
    embeddings: list[list[float]] = Field(description="One vector per input text, in input order.")


class RerankRequest(Schema):
    """Extension: order documents by their relevance to a query with a rerank model."""

    model: str = Field(description="A rerank model id the distribution serves.")
    query: str
    documents: list[str] = Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)
    top_n: int | None = Field(default=None, gt=0, description="Only the most relevant top_n; all when unset.")


class RerankResult(Schema):
    index: int = Field(description="The document's place in the request's documents.")
    relevance_score: float


class RerankResponse(Schema):
    results: list[RerankResult] = Field(description="Most relevant first.")


@runtime_checkable
class Inference(Protocol):
    @webmethod("POST", "/inference/completion", streams=True)
    @dispatch(ByModel(model_type="llm"))
    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        """Complete a text prompt; with ``stream: true`` the answer arrives as chunks."""
        ...

    @webmethod("POST", "/inference/chat_completion", streams=True)
    @dispatch(ByModel(model_type="llm"))
    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        """Answer the next assistant message of a dialog; with ``stream: true`` it arrives as chunks."""
        ...

    @webmethod("POST", "/inference/batch_completion", response_format="jsonl")
    @dispatch(ByModel(model_type="llm", optional=True))
    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        """Complete several prompts; one response per prompt, in input order."""
        ...

    @webmethod("POST", "/inference/batch_chat_completion", response_format="jsonl")
    @dispatch(ByModel(model_type="llm", optional=True))
    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        """Answer several dialogs; one response per dialog, in input order."""
        ...

    @webmethod("POST", "/inference/embeddings")
    @dispatch(ByModel(model_type="embedding"))
    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        """Extension: one embedding vector per text, from an embedding model."""
        ...

    @webmethod("POST", "/inference/rerank")
    @dispatch(ByModel(model_type="rerank", optional=True))
    async def rerank(self, request: RerankRequest) -> RerankResponse:
        """Extension: the documents' relevance to a query, most relevant first, from a rerank model."""
        ...
