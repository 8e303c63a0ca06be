"""remote::openai-compat inference: the Inference API on any server speaking OpenAI's API.

Chat and text completion (plain and streamed), batches, tools, logprobs, structured output and embeddings
are translated onto ``/chat/completions``, ``/completions`` and ``/embeddings`` of vLLM, llama.cpp's
server, Ollama, TGI or another llama-stack server; ``/models`` checks the distribution's models at start-up.
Every call goes through :class:`RemoteService` (timeouts, retries with backoff, errors naming the provider).
What such a server cannot be asked is refused here with a 400 before anything is sent.
See docs/providers/openai-compat.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.common import Attachment, Content, Dialog, Role
from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    LlamaStackError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
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
)
from llama_stack.apis.inspect import Model
from llama_stack.config import ConfigError
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments, attachments_of
from llama_stack.providers.utils.inference.dialog import iter_messages
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.fan_out import fan_out
from llama_stack.providers.utils.remote.openai_answers import (
    OpenAIAnswerReader,
    embeddings_of,
    first_choice,
    requested_alternatives,
    split_echo,
)
from llama_stack.providers.utils.remote.openai_chat import (
    OPENAI_SAMPLING_FIELDS,
    openai_messages,
    openai_response_format,
    openai_tool_choice,
    openai_tools,
    sampling_fields,
)
from llama_stack.providers.utils.remote.registered_models import registered_model, vendor_model_name

from .config import ENV_VAR, PROVIDER_DATA_KEY, OpenAICompatConfig

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

_USER_IMAGES_ONLY = "images can only be sent in user messages (OpenAI's API takes image_url parts there alone)"
_TEXT_PROMPT_ONLY = "a text completion's prompt is text; send images in a chat_completion user message"


# ------------------------------------------------------------------------------------------------ service


class OpenAICompatService(RemoteService):
    """A RemoteService whose key is optional unless ``api_key_required``: without one, no Authorization is sent."""

    def __init__(
        self, config: OpenAICompatConfig, context: ProviderContext, transport: httpx.AsyncBaseTransport | None = None
    ):
        super().__init__(
            provider_id=context.provider_id,
            vendor=f"OpenAI-compatible server at {display_url(config.url)}",
            config=config,
            env_var=ENV_VAR,
            provider_data_key=PROVIDER_DATA_KEY,
            auth_headers=_bearer,
            transport=transport,
        )
        self.key_required = config.api_key_required

    def api_key(self) -> tuple[str, bool]:
        try:
            return super().api_key()
        except AuthenticationError:
            if self.key_required:
                raise
            return "", False


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def display_url(url: str) -> str:
    """The URL without credentials or query, fit for messages and logs."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}".rstrip("/")


# ------------------------------------------------------------------------------- the server's model list


class _Loose(BaseModel):
    """The parts of the server's model list read here; servers add fields of their own, which are ignored.
    (Inference answers are read by the shared :class:`OpenAIAnswerReader`.)"""

    model_config = ConfigDict(extra="ignore")


class _ModelOut(_Loose):
    id: str
    aliases: list[str] = []  # llama-stack servers list them; an alias is served as well


class _ModelList(_Loose):
    data: list[_ModelOut]


# ------------------------------------------------------------------------------------ request mapping


def _bad(where: str, message: str, provider: str) -> BadRequestError:
    return BadRequestError(
        f"{where}: {message}", provider=provider, details=[{"loc": where, "in": "body", "message": message}]
    )


def _is_image(attachment: Attachment) -> bool:
    return attachment.mime_type.split(";", 1)[0].strip().lower().startswith("image/")


@dataclass(frozen=True)
class _Piece:
    """One content of a request with its field path, and why images may not appear in it (None: they may)."""

    content: Content
    where: str
    no_images: str | None


def _dialog_pieces(dialog: Dialog, where: str = "dialog") -> list[_Piece]:
    pieces = []
    for at, message in iter_messages(dialog, where):
        pieces.append(
            _Piece(message.content, f"{at}.content", None if message.role == Role.user else _USER_IMAGES_ONLY)
        )
        for index, response in enumerate(message.tool_responses):
            pieces.append(_Piece(response.content, f"{at}.tool_responses[{index}].content", _USER_IMAGES_ONLY))
    return pieces


def _check_image_url(attachment: Attachment, where: str, provider: str) -> None:
    scheme = attachment.url.split(":", 1)[0].lower()
    if scheme not in ("http", "https", "data"):
        raise _bad(
            where,
            f"an image at a {scheme}:// URL cannot be sent to an OpenAI-compatible server, which cannot read this "
            "machine's files; send it as a data: URL (base64) or an http(s):// URL the server can fetch",
            provider,
        )


def _text_attachments(pieces: list[_Piece], provider: str) -> list[tuple[Attachment, str]]:
    """The text attachments to fetch and inline; images are checked (they travel as image_url parts)."""
    wanted = []
    for piece in pieces:
        for attachment, at in attachments_of(piece.content, piece.where):
            if not _is_image(attachment):
                wanted.append((attachment, at))
            elif piece.no_images is not None:
                raise _bad(at, piece.no_images, provider)
            else:
                _check_image_url(attachment, at, provider)
    return wanted


def _user_content(content: Content, where: str, inlined: InlinedAttachments) -> str | list[dict[str, Any]]:
    """Text as a string; with images, OpenAI's content parts (text attachments inlined as text parts)."""
    items = [content] if isinstance(content, Attachment) else content
    if isinstance(items, str) or not any(isinstance(p, Attachment) and _is_image(p) for p in items):
        return inlined.inline(content, where)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(items):
        at = where if isinstance(content, Attachment) else f"{where}[{index}]"
        if isinstance(part, str):
            if part:
                parts.append({"type": "text", "text": part})
        elif _is_image(part):
            parts.append({"type": "image_url", "image_url": {"url": part.url}})
        else:
            parts.append({"type": "text", "text": inlined.inline(part, at)})
    return parts


def _content(inlined: InlinedAttachments, content: Content, where: str, role: Role) -> str | list[dict[str, Any]]:
    """A message's content for openai_messages: images travel in user messages only (checked up front)."""
    return _user_content(content, where, inlined) if role == Role.user else inlined.inline(content, where)


def _with_extensions(fields: dict[str, Any], extensions: str, provider_name: str, provider: str) -> dict[str, Any]:
    """The sampling fields as this server takes them: those beyond OpenAI's only as its extension fields."""
    extra = [name for name in fields if name not in OPENAI_SAMPLING_FIELDS]  # top_k, repetition_penalty
    if extra and extensions == "none":
        raise _bad(
            f"sampling_params.{extra[0]}",
            f"{provider_name} sends no {' and '.join(extra)}: OpenAI's API has no such field and this provider is "
            "configured with sampling_extensions: none. Leave them at their defaults (top_k 0, repetition_penalty "
            "1.0), or set sampling_extensions to 'vllm' or 'llama.cpp' if the server takes them",
            provider,
        )
    if extensions == "llama.cpp" and "repetition_penalty" in fields:
        fields["repeat_penalty"] = fields.pop("repetition_penalty")
    return fields


# ------------------------------------------------------------------------------------------- provider


class OpenAICompatInference:
    """Satisfies ``llama_stack.apis.inference.Inference`` (rerank aside) on an OpenAI-compatible server."""

    # Completions' prompt_logprobs go to the server as echo with logprobs (vLLM's and this runtime's /v1 do it).
    scores_prompts = True

    def __init__(self, config: OpenAICompatConfig, context: ProviderContext, service: OpenAICompatService):
        self.config = config
        self.provider_id = context.provider_id
        self.service = service
        self.answers = OpenAIAnswerReader(service)
        self.models: dict[str, Model] = {}
        self._served: list[_ModelOut] | None = None
        self._listed = False
        self._inliner = AttachmentInliner(config.attachments)
        # Shared by every batch this provider runs: the server sees at most max_concurrency batch calls at once.
        self._batch_slots = asyncio.Semaphore(config.max_concurrency)

    # ------------------------------------------------------------------------------------- lifecycle
    async def register_model(self, model: Model) -> None:
        if model.model_type == "rerank":
            raise ConfigError(
                f"model '{model.model_id}': {self.service.name} cannot serve rerank models (OpenAI's API has no "
                "rerank route); give it an llm or embedding model"
            )
        self.models[model.model_id] = model
        if self.config.check_models:
            await self._check_served(model)

    async def shutdown(self) -> None:
        await self.service.aclose()

    async def _check_served(self, model: Model) -> None:
        served = await self._served_models()
        if served is None:
            return
        name = vendor_model_name(model)
        names = {n for m in served for n in (m.id, *m.aliases)}
        if name in names or f"{name}:latest" in names:  # Ollama lists 'llama3' as 'llama3:latest'
            return
        listed = ", ".join(sorted(m.id for m in served)) or "none"
        raise ConfigError(
            f"model '{model.model_id}': {self.service.name} does not serve '{name}' (GET /models lists: {listed}); "
            "fix the model's provider_model_id, or set check_models: false in the provider's config if the "
            "server answers any model name (llama.cpp's server does)"
        )

    async def _served_models(self) -> list[_ModelOut] | None:
        """The server's model list, read once; None when it cannot be read (the server may come up later)."""
        if self._listed:
            return self._served
        self._listed = True
        try:
            answer = await self.service.json("GET", "/models")
            self._served = self._parse(_ModelList, answer, "GET /models").data
        except LlamaStackError as exc:
            hint = " (does url end in /v1?)" if isinstance(exc, VendorStatusError) and exc.vendor_status == 404 else ""
            log.warning(
                "%s: not checking its models, the model list cannot be read%s: %s", self.service.name, hint, exc.message
            )
        return self._served

    # ------------------------------------------------------------------------------------- inference
    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionResponseStreamChunk]:
        model = self._model(request.model)
        body = await self._chat_body(request, model)
        if request.stream:
            body.update(self._stream_fields())
            with self._vendor_errors(model, "/chat/completions"):
                events = await self.service.open_stream("POST", "/chat/completions", json_body=body)
            return self.answers.chat_chunks(events, requested_alternatives(request))
        with self._vendor_errors(model, "/chat/completions"):
            answer = await self.service.json("POST", "/chat/completions", json_body=body)
        return self.answers.chat_response(answer, requested_alternatives(request))

    async def completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncIterator[CompletionResponseStreamChunk]:
        model = self._model(request.model)
        body = await self._completion_body(request, model)
        if request.stream:
            body.update(self._stream_fields())
            with self._vendor_errors(model, "/completions"):
                events = await self.service.open_stream("POST", "/completions", json_body=body)
            return self.answers.completion_chunks(events, requested_alternatives(request))
        with self._vendor_errors(model, "/completions"):
            answer = await self.service.json("POST", "/completions", json_body=body)
        if request.prompt_logprobs is not None:
            return self._scored_completion_response(answer, request, body["prompt"])
        return self.answers.completion_response(answer, requested_alternatives(request))

    async def batch_completion(self, request: BatchCompletionRequest) -> list[CompletionResponse]:
        shared = request.model_dump(exclude={"content_batch"})
        singles = [CompletionRequest(content=content, stream=False, **shared) for content in request.content_batch]
        # Not streamed, so each answer is a whole CompletionResponse.
        return cast(list[CompletionResponse], await fan_out(singles, self.completion, self._batch_slots))

    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        shared = request.model_dump(exclude={"batch_dialogs"})
        singles = [ChatCompletionRequest(dialog=dialog, stream=False, **shared) for dialog in request.batch_dialogs]
        return cast(list[ChatCompletionResponse], await fan_out(singles, self.chat_completion, self._batch_slots))

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        model = self._model(request.model)
        body = {"model": vendor_model_name(model), "input": list(request.contents), "encoding_format": "float"}
        with self._vendor_errors(model, "/embeddings"):
            answer = await self.service.json("POST", "/embeddings", json_body=body)
        vectors = embeddings_of(answer, len(request.contents), self.service, "POST /embeddings")
        return EmbeddingsResponse(embeddings=vectors)

    # ----------------------------------------------------------------------------- request bodies
    def _model(self, model_id: str) -> Model:
        return registered_model(self.models, model_id, self.service)

    async def _inlined(self, pieces: list[_Piece], model: Model) -> InlinedAttachments:
        return await self._inliner.fetch(_text_attachments(pieces, self.provider_id), model=model.model_id)

    async def _chat_body(self, request: ChatCompletionRequest, model: Model) -> dict[str, Any]:
        fields = self._generation_fields(request)  # refusals first, before any attachment is fetched
        inlined = await self._inlined(_dialog_pieces(request.dialog), model)
        body: dict[str, Any] = {
            "model": vendor_model_name(model),
            "messages": openai_messages(request.dialog, partial(_content, inlined), self.service),
            **fields,
        }
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        if request.logprobs:
            body["logprobs"] = True
            if request.top_logprobs:
                body["top_logprobs"] = request.top_logprobs
        if request.available_tools:
            body["tools"] = openai_tools(request.available_tools)
            body["tool_choice"] = openai_tool_choice(request.tool_choice)
        return body

    async def _completion_body(self, request: CompletionRequest, model: Model) -> dict[str, Any]:
        fields = self._generation_fields(request)
        inlined = await self._inlined([_Piece(request.content, "content", _TEXT_PROMPT_ONLY)], model)
        return {
            "model": vendor_model_name(model),
            "prompt": inlined.inline(request.content, "content"),
            **fields,
            "max_tokens": request.max_tokens or self.config.completion_max_tokens,
            # The legacy route's logprobs is the number of alternatives per token.
            **({"logprobs": request.top_logprobs} if request.logprobs else {}),
            # Scoring the prompt: echo it, with the most alternatives either part asks for.
            **(
                {
                    "echo": True,
                    "logprobs": max(request.prompt_logprobs, request.top_logprobs if request.logprobs else 0),
                }
                if request.prompt_logprobs is not None
                else {}
            ),
        }

    def _generation_fields(self, request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        fields = _with_extensions(
            sampling_fields(request.sampling_params),
            self.config.sampling_extensions,
            self.service.name,
            self.provider_id,
        )
        if request.stop:
            fields["stop"] = list(request.stop)
        response_format = openai_response_format(request.response_format)
        if response_format is not None:
            fields["response_format"] = response_format
        return fields

    def _stream_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"stream": True}
        if self.config.stream_usage:
            fields["stream_options"] = {"include_usage": True}
        return fields

    # ---------------------------------------------------------------------------------- answers
    def _parse(self, shape: type[ModelT], payload: Any, what: str) -> ModelT:
        """``payload`` as ``shape``; a 502 naming the field that is off."""
        try:
            return shape.model_validate(payload)
        except PydanticValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in error["loc"]) or "the body"
            raise ProviderError(
                f"{self.service.name} answered {what} in an unexpected shape ({where}: {error['msg']})",
                provider=self.provider_id,
            ) from None

    def _scored_completion_response(self, payload: Any, request: CompletionRequest, prompt: str) -> CompletionResponse:
        """An echoed completion (OpenAI's echo with logprobs) split where the prompt ends."""
        response = self.answers.completion_response(payload, None)
        choice = first_choice(payload, self.service, "POST /completions")
        echoed = split_echo(choice, prompt, request.prompt_logprobs or 0, requested_alternatives(request))
        if echoed is None:
            raise ProviderError(
                f"{self.service.name} answered an echoed completion (echo with logprobs) without the prompt and its "
                "tokens' logprobs at the start: it cannot score prompts",
                provider=self.provider_id,
            )
        return response.model_copy(
            update={"content": echoed.text, "logprobs": echoed.logprobs, "prompt_logprobs": echoed.prompt_logprobs}
        )

    # ------------------------------------------------------------------------------------ helpers
    @contextmanager
    def _vendor_errors(self, model: Model, path: str) -> Iterator[None]:
        """The server's statuses that say something about the request, as the errors that say it."""
        try:
            yield
        except VendorStatusError as exc:
            raise self._mapped(exc, model, path) from None

    def _mapped(self, exc: VendorStatusError, model: Model, path: str) -> LlamaStackError:
        name = self.service.name
        if exc.vendor_status == 404:
            return NotFoundError(
                f"{name} does not serve model '{vendor_model_name(model)}' (the model '{model.model_id}' of this "
                f"distribution) or the route {path} (404): {exc.vendor_message}. Check the model's "
                "provider_model_id against the server's GET /models, and that the provider's url ends in /v1",
                provider=self.provider_id,
                code="model_not_found",
            )
        if exc.vendor_status == 501:
            return NotSupportedError(
                f"{name} does not support this request (501 on {path}): {exc.vendor_message}", provider=self.provider_id
            )
        if exc.vendor_status in (401, 403) and not self.service.api_key()[0]:
            return ProviderError(
                f"{name} wants an API key ({exc.vendor_status} on {path}) and none was given: set api_key in the "
                f'provider\'s config or ${ENV_VAR}, or send {{"{PROVIDER_DATA_KEY}": "..."}} in the '
                "X-LlamaStack-Provider-Data header (and api_key_required: true to refuse requests without one)",
                provider=self.provider_id,
                code="provider_auth_failed",
            )
        return exc


async def build(
    config: OpenAICompatConfig, context: ProviderContext, transport: httpx.AsyncBaseTransport | None = None
) -> OpenAICompatInference:
    return OpenAICompatInference(config, context, OpenAICompatService(config, context, transport))
