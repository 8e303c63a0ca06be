"""OpenAI-compatible routes: chat completions, completions and the model list (extensions beside the seed).

The stack serves them itself, translating each request onto the Inference API, whenever the distribution
serves inference (``llama_stack.openai_compat``). These types model the parts of OpenAI's API this runtime
honours, so the OpenAPI document says exactly what is accepted:

* a field OpenAI defines and we honour is declared and mapped;
* a field OpenAI defines that changes nothing we can observe (``user``, ``metadata``, ``store``,
  ``service_tier``, ``prompt_cache_key``, ``safety_identifier``, a message's ``name``, a tool's ``strict``,
  ``stream_options.include_obfuscation``, ``parallel_tool_calls: true``) is accepted and ignored;
* a field OpenAI defines that we cannot honour is declared only where a client may send its default
  (``best_of: 1``, ...); any other value is refused with a 400 naming the
  parameter (``code: unsupported_parameter`` / ``unsupported_value``);
* anything else is an unknown field (a 400 naming it: these routes answer schema errors as OpenAI does).

Extensions are marked as such: ``top_k`` and ``repetition_penalty`` (as vLLM and llama.cpp's server accept
them), ``response_format`` on completions, and ``aliases`` / ``context_length`` on listed models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import ConfigDict, Field, model_serializer, model_validator

from .common import JsonObject, Schema
from .inference import (
    MAX_REPETITION_PENALTY,
    MAX_STOP_LENGTH,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    MAX_TOP_K,
    MIN_REPETITION_PENALTY,
    MIN_SAMPLING_TEMPERATURE,
    SEED_RANGE,
    StopString,
)
from .routes import webmethod

# ---------------------------------------------------------------------------------------------- requests


class OpenAITextPart(Schema):
    type: Literal["text"]
    text: str


class OpenAIImageURL(Schema):
    url: str = Field(description="An http(s):// or data: URL.")
    detail: Literal["auto", "low", "high"] | None = Field(default=None, description="Accepted and ignored.")


class OpenAIImagePart(Schema):
    type: Literal["image_url"]
    image_url: OpenAIImageURL


class OpenAIRefusalPart(Schema):
    """In assistant messages sent back as history; read as text."""

    type: Literal["refusal"]
    refusal: str


OpenAIContentPart = Annotated[OpenAITextPart | OpenAIImagePart | OpenAIRefusalPart, Field(discriminator="type")]


class OpenAIFunctionCall(Schema):
    name: str
    arguments: str = Field(description="The arguments: a JSON object encoded as a string.")


class OpenAIToolCall(Schema):
    id: str
    type: Literal["function"] = "function"
    function: OpenAIFunctionCall


class OpenAIChatMessage(Schema):
    """One message of ``messages``; which fields apply depends on ``role``.

    ``developer`` is read as ``system``. ``tool_calls`` belong to assistant messages and ``tool_call_id``
    to tool messages, which must answer a call of an earlier assistant message.
    """

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[OpenAIContentPart] | None = Field(
        default=None, description="Required but for an assistant message with tool_calls."
    )
    name: str | None = Field(default=None, description="Accepted and ignored.")
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None
    # What an assistant message answered by this server carries, so a client can send it back as is.
    refusal: str | None = Field(default=None, description="Accepted and ignored.")
    annotations: list[JsonObject] | None = Field(default=None, description="Accepted and ignored.")
    audio: JsonObject | None = Field(default=None, description="Refused unless null.")
    function_call: JsonObject | None = Field(default=None, description="Refused unless null: use tool_calls.")

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> OpenAIChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry a tool_call_id")
        if isinstance(self.content, list):
            for part in self.content:
                if part.type == "image_url" and self.role != "user":
                    raise ValueError("image parts belong to user messages")
                if part.type == "refusal" and self.role != "assistant":
                    raise ValueError("refusal parts belong to assistant messages")
        return self


class OpenAIFunctionDefinition(Schema):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: JsonObject | None = Field(default=None, description="A JSON Schema object of the arguments.")
    strict: bool | None = Field(default=None, description="Accepted; the arguments are not checked against the schema.")


class OpenAITool(Schema):
    type: Literal["function"]
    function: OpenAIFunctionDefinition


class OpenAINamedFunction(Schema):
    name: str


class OpenAINamedToolChoice(Schema):
    type: Literal["function"]
    function: OpenAINamedFunction


OpenAIToolChoice = Literal["none", "auto", "required"] | OpenAINamedToolChoice


class OpenAIResponseFormatText(Schema):
    type: Literal["text"]


class OpenAIResponseFormatJSONObject(Schema):
    type: Literal["json_object"]


class OpenAIJSONSchema(Schema):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    name: str
    description: str | None = None
    schema_: JsonObject | None = Field(default=None, alias="schema", description="Without one: any JSON object.")
    strict: bool | None = Field(default=None, description="Accepted and ignored.")


class OpenAIResponseFormatJSONSchema(Schema):
    type: Literal["json_schema"]
    json_schema: OpenAIJSONSchema


OpenAIResponseFormat = Annotated[
    OpenAIResponseFormatText | OpenAIResponseFormatJSONObject | OpenAIResponseFormatJSONSchema,
    Field(discriminator="type"),
]


class OpenAIStreamOptions(Schema):
    include_usage: bool | None = Field(
        default=None, description="A last chunk with no choices and the request's usage, before [DONE]."
    )
    include_obfuscation: bool | None = Field(default=None, description="Accepted and ignored: chunks are never padded.")


Temperature = Field(
    default=None,
    ge=0,
    le=MAX_TEMPERATURE,
    description=f"Default 1 (sampling); 0 (or below {MIN_SAMPLING_TEMPERATURE}) is greedy decoding.",
)
TopP = Field(default=None, ge=0, le=1, description="Default 1; 0 is greedy decoding.")
StopList = Annotated[list[StopString], Field(max_length=8)]
Stop = Field(
    default=None,
    description=f"Up to 8 strings of at most {MAX_STOP_LENGTH} characters; generation stops before any of them.",
)
Seed = Field(
    default=None,
    ge=SEED_RANGE[0],
    le=SEED_RANGE[1],
    description="Makes sampling repeatable, where the provider supports it.",
)
N = Field(default=None, ge=1, le=128, description="Choices per prompt (streamed one after another).")
Penalty = Field(default=None, ge=-2, le=2, description="As OpenAI defines it; 0 (the default) is no penalty.")
LogitBias = Field(
    default=None, description="Token id (the model's own, as digits) -> bias in [-100, 100] added to its logit."
)
Ignored = Field(default=None, description="Accepted and ignored.")
TopK = Field(
    default=None, ge=0, le=MAX_TOP_K, description="Extension: sample among the k most likely tokens; 0 means no limit."
)
RepetitionPenalty = Field(
    default=None,
    ge=MIN_REPETITION_PENALTY,
    le=MAX_REPETITION_PENALTY,
    description=f"Extension: 1 means no penalty; {MIN_REPETITION_PENALTY} to {MAX_REPETITION_PENALTY}.",
)


class OpenAIChatCompletionRequest(Schema):
    """POST /v1/chat/completions."""

    model: str = Field(description="A model id (or alias) the distribution serves; see GET /v1/models.")
    messages: list[OpenAIChatMessage] = Field(min_length=1)
    temperature: float | None = Temperature
    top_p: float | None = TopP
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS_LIMIT,
        description="Default: until the model stops. Not beyond the model's context window.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS_LIMIT, description="The older name of max_completion_tokens."
    )
    stop: StopString | StopList | None = Stop
    seed: int | None = Seed
    stream: bool | None = None
    stream_options: OpenAIStreamOptions | None = Field(default=None, description="Only with stream: true.")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="Only with logprobs: true.")
    tools: list[OpenAITool] | None = None
    tool_choice: OpenAIToolChoice | None = Field(default=None, description="Default 'auto'.")
    parallel_tool_calls: bool | None = Field(default=None, description="false keeps only the first tool call.")
    response_format: OpenAIResponseFormat | None = None
    # Declared so that their defaults pass; other values are refused (400).
    n: int | None = N
    presence_penalty: float | None = Penalty
    frequency_penalty: float | None = Penalty
    logit_bias: dict[str, float] | None = LogitBias
    modalities: list[str] | None = Field(default=None, description='Only ["text"].')
    audio: JsonObject | None = Field(default=None, description="Refused unless null.")
    functions: list[JsonObject] | None = Field(default=None, description="Refused: use tools.")
    function_call: str | JsonObject | None = Field(default=None, description="Refused: use tool_choice.")
    reasoning_effort: str | None = Field(default=None, description="Refused unless null.")
    # Accepted and ignored.
    user: str | None = Ignored
    metadata: dict[str, str] | None = Ignored
    store: bool | None = Field(default=None, description="Accepted and ignored: nothing is stored.")
    service_tier: str | None = Ignored
    prompt_cache_key: str | None = Ignored
    safety_identifier: str | None = Ignored
    # Extensions.
    top_k: int | None = TopK
    repetition_penalty: float | None = RepetitionPenalty


class OpenAICompletionRequest(Schema):
    """POST /v1/completions (OpenAI's legacy text completion)."""

    model: str = Field(description="A model id (or alias) the distribution serves; see GET /v1/models.")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A prompt, or several (not when streaming); token ids are refused."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOKENS_LIMIT,
        description="Default 16, as OpenAI's; 0 (with echo) scores the prompt and generates nothing. Not beyond the model's context window.",
    )
    temperature: float | None = Temperature
    top_p: float | None = TopP
    stop: StopString | StopList | None = Stop
    seed: int | None = Seed
    stream: bool | None = None
    stream_options: OpenAIStreamOptions | None = Field(default=None, description="Only with stream: true.")
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Log probabilities, with this many alternatives."
    )
    echo: bool | None = Field(
        default=None,
        description="Prepend the prompt to the text; with logprobs, its tokens lead the logprobs too (the first one's is null).",
    )
    n: int | None = N
    best_of: int | None = Field(default=None, ge=1, description="Only 1.")
    suffix: str | None = Field(default=None, description="Refused unless null.")
    presence_penalty: float | None = Penalty
    frequency_penalty: float | None = Penalty
    logit_bias: dict[str, float] | None = LogitBias
    user: str | None = Ignored
    # Extensions.
    top_k: int | None = TopK
    repetition_penalty: float | None = RepetitionPenalty
    response_format: OpenAIResponseFormat | None = Field(default=None, description="Extension, as on chat completions.")


# --------------------------------------------------------------------------------------------- responses


class OpenAIUsage(Schema):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAITopLogprob(Schema):
    token: str
    logprob: float
    bytes: list[int] | None = Field(default=None, description="The token's UTF-8 bytes.")


class OpenAITokenLogprob(Schema):
    token: str
    logprob: float
    bytes: list[int] | None = Field(default=None, description="The token's UTF-8 bytes.")
    top_logprobs: list[OpenAITopLogprob] = Field(default_factory=list)


class OpenAIChoiceLogprobs(Schema):
    content: list[OpenAITokenLogprob] | None = None
    refusal: list[OpenAITokenLogprob] | None = None


class OpenAIAssistantMessage(Schema):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(default=None, description="null when the answer is only tool calls.")
    refusal: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class OpenAIChatChoice(Schema):
    index: int
    message: OpenAIAssistantMessage
    logprobs: OpenAIChoiceLogprobs | None = None
    finish_reason: FinishReason


class OpenAIChatCompletion(Schema):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time, in seconds.")
    model: str
    system_fingerprint: str | None = None
    choices: list[OpenAIChatChoice]
    usage: OpenAIUsage | None = Field(default=None, description="null when the provider does not count tokens.")


class _DropsNulls(Schema):
    """Delta objects leave unset fields out, as OpenAI's streams do (a null would read as 'cleared')."""

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: Any) -> Any:
        return {key: value for key, value in handler(self).items() if value is not None}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        # The schema of the fields, not of the untyped serializer above.
        return handler({key: value for key, value in core_schema.items() if key != "serialization"})


class OpenAIFunctionCallDelta(_DropsNulls):
    name: str | None = None
    arguments: str | None = None


class OpenAIToolCallDelta(_DropsNulls):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: OpenAIFunctionCallDelta | None = None


class OpenAIChoiceDelta(_DropsNulls):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[OpenAIToolCallDelta] | None = None


class OpenAIChatChunkChoice(Schema):
    index: int
    delta: OpenAIChoiceDelta
    logprobs: OpenAIChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class OpenAIChatCompletionChunk(Schema):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[OpenAIChatChunkChoice]
    usage: OpenAIUsage | None = Field(
        default=None, description="Only on the last chunk (whose choices are empty), with stream_options.include_usage."
    )


class OpenAICompletionLogprobs(Schema):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(
        description="null for an echoed prompt's first token, which nothing precedes."
    )
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(
        description="Where each token starts in the completion's text (counted across chunks when streaming)."
    )


class OpenAICompletionChoice(Schema):
    index: int
    text: str
    logprobs: OpenAICompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class OpenAICompletion(Schema):
    """A completion, or one chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[OpenAICompletionChoice]
    usage: OpenAIUsage | None = None


class OpenAIModel(Schema):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this server started serving it (Unix time, in seconds).")
    owned_by: str = Field(description="The provider serving it.")
    aliases: list[str] = Field(default_factory=list, description="Extension: other ids requests may use.")
    context_length: int | None = Field(default=None, description="Extension: the context window, in tokens.")


class OpenAIModelList(Schema):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIEmbeddingsRequest(Schema):
    model: str
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not accepted).")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: each vector as little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(default=None, gt=0, description="Refused unless it is the model's own size.")
    user: str | None = Field(default=None, description="Accepted and ignored.")


class OpenAIEmbedding(Schema):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingsUsage(Schema):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingList(Schema):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIEmbeddingsUsage


@runtime_checkable
class OpenAI(Protocol):
    @webmethod("POST", "/v1/chat/completions", streams=True, stream_end="[DONE]", exclude_none=False)
    async def create_chat_completion(
        self, request: OpenAIChatCompletionRequest
    ) -> OpenAIChatCompletion | AsyncIterator[OpenAIChatCompletionChunk]:
        """OpenAI-compatible chat completion; with ``stream: true`` chunks as server-sent events, then ``[DONE]``."""
        ...

    @webmethod("POST", "/v1/completions", streams=True, stream_end="[DONE]", exclude_none=False)
    async def create_completion(
        self, request: OpenAICompletionRequest
    ) -> OpenAICompletion | AsyncIterator[OpenAICompletion]:
        """OpenAI-compatible text completion; with ``stream: true`` chunks as server-sent events, then ``[DONE]``."""
        ...

    @webmethod("GET", "/v1/models", exclude_none=False)
    async def list_models(self) -> OpenAIModelList:
        """The served models in OpenAI's list shape."""
        ...

    @webmethod("GET", "/v1/models/{model:path}", exclude_none=False)
    async def retrieve_model(self, model: str) -> OpenAIModel:
        """One served model, named by its id or an alias (ids may hold slashes); 404 ``model_not_found`` otherwise."""
        ...

    @webmethod("POST", "/v1/embeddings", exclude_none=False)
    async def create_embeddings(self, request: OpenAIEmbeddingsRequest) -> OpenAIEmbeddingList:
        """OpenAI-compatible embeddings from an embedding model."""
        ...
