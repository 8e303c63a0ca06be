"""remote::emissary inference: chat and text completion, embeddings, and fine-tuned models on deployments.

What maps (VENDOR-MAPPING.md §1, §2, §4; docs/providers/emissary-inference.md for users):

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

Deployments: a model whose ``metadata.deployment`` is set is served by the Emissary deployment named
``provider_model_id or model_id`` in the configured project. ``register_model`` finds it (or creates it from
``training_job_id`` and ``checkpoint``) and waits up to ``deployment_wait`` for ``Deployed``. Requests check
the cached status; a deployment that went idle (``Deactivated``) is reactivated once and the request gets a
retriable 503 at once instead of hanging for the 8 to 20 minutes reactivation takes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.common import Attachment, Content, Dialog, Message, Role, StopReason
from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    LlamaStackError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
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
from llama_stack.providers.utils.remote.url_paths import segment

from .config import EmissaryInferenceConfig
from .service import emissary_service

log = logging.getLogger(__name__)

DEPLOYED = "Deployed"
DEACTIVATED = "Deactivated"
REACTIVATING = "Reactivating"
STARTING = frozenset({"Pending", "Deploying"})
# Statuses a deployment does not leave by itself.
TERMINAL = frozenset({"Failed", "Cancelled", "Terminated", "TimedOut"})
REACTIVATION_TIME = "about 8 to 20 minutes"
# What a caller is told to wait before retrying a deployment that is coming up (Retry-After, in seconds).
REACTIVATION_RETRY_AFTER = 60.0


async def build(config: EmissaryInferenceConfig, context: ProviderContext) -> EmissaryInference:
    return EmissaryInference(config, emissary_service(config, context), context.provider_id)


# ------------------------------------------------------------------------------------------ deployments
class DeploymentSpec(BaseModel):
    """A model's ``metadata.deployment``: which fine-tuned checkpoint its deployment serves."""

    model_config = ConfigDict(extra="forbid")

    training_job_id: str | None = Field(
        default=None, description="The training job (tr-...), or a base model name with checkpoint 0."
    )
    checkpoint: int | None = Field(default=None, ge=0, description="The checkpoint to serve (0: the base model).")
    description: str | None = None
    inactive_timeout: int | None = Field(
        default=None, gt=0, description="Idle seconds before Emissary deactivates it (Emissary's default: 3600)."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> DeploymentSpec:
        if (self.training_job_id is None) != (self.checkpoint is None):
            raise ValueError(
                "training_job_id and checkpoint go together (both to create the deployment, neither to use an existing one)"
            )
        return self

    @property
    def creatable(self) -> bool:
        return self.training_job_id is not None


@dataclass
class Deployment:
    """What this provider knows of one deployment; ``status`` is a cache, refreshed as documented above."""

    model_id: str
    name: str
    project_id: str
    spec: DeploymentSpec
    id: str | None = None
    status: str | None = None
    checked_at: float = 0.0
    # Set once a reactivation was asked for this deactivation, so that concurrent and retried requests do
    # not ask again; cleared when the deployment is seen in any other status.
    reactivation_sent: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def label(self) -> str:
        where = f" ({self.id})" if self.id else ""
        return f"deployment '{self.name}'{where} of model '{self.model_id}'"


class Deployments:
    """Finds, creates, waits for and reactivates deployments; turns their status into request errors."""

    def __init__(self, svc: RemoteService, config: EmissaryInferenceConfig, provider_id: str):
        self._svc = svc
        self._config = config
        self._provider_id = provider_id

    # -- start-up --

    async def set_up(self, deployment: Deployment) -> None:
        """Find or create it and wait for it; a problem only the user can fix stops the start-up.

        Problems that may pass (no key configured, the vendor unreachable or failing) are logged and the
        set-up is left to the first request, which answers 503 until the deployment is up.
        """
        try:
            await self._find_or_create(deployment)
            await self._wait(deployment)
        except LlamaStackError as exc:
            if not _deferrable(exc):
                raise
            log.warning(
                "%s: could not set up %s at start-up (%s); the first request to it tries again",
                self._svc.name,
                deployment.label,
                exc.message,
            )
            return
        if deployment.status in TERMINAL:
            raise self._status_error(deployment)

    async def _wait(self, deployment: Deployment) -> None:
        deadline = time.monotonic() + self._config.deployment_wait
        while deployment.status in STARTING or deployment.status == REACTIVATING:
            if time.monotonic() + self._config.poll_interval > deadline:
                log.warning(
                    "%s: %s is still %s after %g s; serving starts anyway and requests to the model answer 503 "
                    "until it is Deployed",
                    self._svc.name,
                    deployment.label,
                    deployment.status,
                    self._config.deployment_wait,
                )
                return
            await asyncio.sleep(self._config.poll_interval)  # the deployment's poll interval, not a race cover
            try:
                await self._fetch(deployment)
            except LlamaStackError as exc:
                if not _deferrable(exc):
                    raise
                # One failed poll is no reason to stop waiting: the next one may answer.
                log.warning("%s: checking %s failed: %s", self._svc.name, deployment.label, exc.message)
        if deployment.status == DEPLOYED:
            log.info("%s: %s is Deployed", self._svc.name, deployment.label)
        elif deployment.status == DEACTIVATED:
            # Waking it costs money and 8-20 minutes; the first request does it, as Emissary itself would.
            log.info("%s: %s is Deactivated; the first request to it reactivates it", self._svc.name, deployment.label)

    # -- requests --

    async def ready(self, deployment: Deployment) -> None:
        """Return when the deployment serves; otherwise raise what the request should answer."""
        if deployment.status == DEPLOYED:
            return
        async with deployment.lock:
            if deployment.status != DEPLOYED and self._stale(deployment):
                await self._refresh(deployment)
            self._raise_unless_deployed(deployment)

    async def after_failure(self, deployment: Deployment) -> None:
        """A request to the deployment failed as a missing or sleeping model would: re-check its status.

        Raises the deployment's error when it is not up; returns (the caller re-raises its own error)
        when it is, or when the check itself fails.
        """
        async with deployment.lock:
            try:
                await self._refresh(deployment)
            except LlamaStackError as exc:
                log.warning("%s: could not re-check %s: %s", self._svc.name, deployment.label, exc.message)
                return
            self._raise_unless_deployed(deployment)

    def _stale(self, deployment: Deployment) -> bool:
        if deployment.status is None:
            return True
        return time.monotonic() - deployment.checked_at >= self._config.status_recheck_interval

    async def _refresh(self, deployment: Deployment) -> None:
        if deployment.id is None:
            await self._find_or_create(deployment)
        else:
            try:
                await self._fetch(deployment)
            except VendorStatusError as exc:
                if exc.vendor_status != 404:
                    raise
                log.warning("%s: %s is gone; finding or creating it again", self._svc.name, deployment.label)
                deployment.id = deployment.status = None
                await self._find_or_create(deployment)
        if deployment.status == DEACTIVATED and not deployment.reactivation_sent:
            await self._reactivate(deployment)

    async def _reactivate(self, deployment: Deployment) -> None:
        path = f"{self._base(deployment)}/{segment(deployment.id)}/reactivate"
        try:
            await self._svc.json("POST", path)
        except BadRequestError as exc:
            # Emissary's 400 here means it is already deployed or reactivating: nothing more to ask.
            log.info("%s: reactivating %s: %s", self._svc.name, deployment.label, exc.message)
        else:
            log.info("%s: asked Emissary to reactivate %s", self._svc.name, deployment.label)
        deployment.reactivation_sent = True
        deployment.status = REACTIVATING

    # -- vendor calls --

    def _base(self, deployment: Deployment) -> str:
        return f"/v1/projects/{segment(deployment.project_id)}/deployments"

    async def _find_or_create(self, deployment: Deployment) -> None:
        try:
            listed = await self._svc.json("GET", self._base(deployment))
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            raise NotFoundError(
                f"{self._svc.name}: project '{deployment.project_id}' (the provider's project_id) does not exist "
                f"on Emissary, so {deployment.label} cannot be found or created",
                provider=self._provider_id,
                code="project_not_found",
            ) from None
        found = _pick([d for d in listed or [] if isinstance(d, dict) and d.get("name") == deployment.name])
        if found is not None:
            deployment.id = str(found["id"])
            await self._fetch(deployment, check_spec=True)
            return
        if not deployment.spec.creatable:
            raise NotFoundError(
                f"{self._svc.name}: there is no {deployment.label} in project '{deployment.project_id}'; create it "
                "on Emissary, or give training_job_id and checkpoint in the model's metadata.deployment so that "
                "it is created",
                provider=self._provider_id,
                code="deployment_not_found",
            )
        await self._create(deployment)

    async def _create(self, deployment: Deployment) -> None:
        spec = deployment.spec
        body: dict[str, Any] = {
            "training_job_id": spec.training_job_id,
            "checkpoint": spec.checkpoint,
            "name": deployment.name,
        }
        body["description"] = spec.description or f"llama-stack model {deployment.model_id}"
        if spec.inactive_timeout is not None:
            body["inactive_timeout"] = spec.inactive_timeout
        # Creating twice would make two deployments: a dropped connection is not retried.
        created = await self._svc.json("POST", self._base(deployment), json_body=body, idempotent=False)
        deployment.id = str(_field(created, "id", self._svc))
        deployment.status = str(created.get("status") or "Pending")
        deployment.checked_at = time.monotonic()
        log.info(
            "%s: created %s from %s checkpoint %s (%s)",
            self._svc.name,
            deployment.label,
            spec.training_job_id,
            spec.checkpoint,
            deployment.status,
        )

    async def _fetch(self, deployment: Deployment, check_spec: bool = False) -> None:
        detail = await self._svc.json("GET", f"{self._base(deployment)}/{segment(deployment.id)}")
        status = str(_field(detail, "status", self._svc))
        if check_spec:
            self._check_spec(deployment, detail)
        if status != DEACTIVATED:
            deployment.reactivation_sent = False
        if status != deployment.status:
            log.info("%s: %s is %s", self._svc.name, deployment.label, status)
        deployment.status = status
        deployment.checked_at = time.monotonic()

    def _check_spec(self, deployment: Deployment, detail: dict[str, Any]) -> None:
        """An existing deployment of that name must serve what the model's metadata asks for."""
        spec = deployment.spec
        if not spec.creatable:
            return
        serves = (detail.get("training_id"), detail.get("checkpoint"))
        if None in serves or serves == (spec.training_job_id, spec.checkpoint):
            return
        raise BadRequestError(
            f"{self._svc.name}: {deployment.label} already exists and serves {serves[0]} checkpoint {serves[1]}, "
            f"but the model's metadata.deployment asks for {spec.training_job_id} checkpoint {spec.checkpoint}; "
            "delete the deployment on Emissary or give the model another provider_model_id",
            provider=self._provider_id,
            param="metadata.deployment",
            code="deployment_mismatch",
        )

    # -- status -> error --

    def _raise_unless_deployed(self, deployment: Deployment) -> None:
        if deployment.status != DEPLOYED:
            raise self._status_error(deployment)

    def _status_error(self, deployment: Deployment) -> LlamaStackError:
        status, common = deployment.status, {"provider": self._provider_id}
        if status in (DEACTIVATED, REACTIVATING):
            return ServiceUnavailableError(
                f"{self._svc.name}: {deployment.label} was deactivated after being idle and is being reactivated, "
                f"which takes {REACTIVATION_TIME}; retry later",
                code="deployment_reactivating",
                retry_after=REACTIVATION_RETRY_AFTER,
                **common,
            )
        if status in TERMINAL:
            return ProviderError(
                f"{self._svc.name}: {deployment.label} is {status} and will not come back by itself; delete it on "
                "Emissary and restart the stack to create it again, or give the model another provider_model_id",
                code="deployment_failed",
                **common,
            )
        return ServiceUnavailableError(
            f"{self._svc.name}: {deployment.label} is not serving yet (status {status}); retry in a few minutes",
            code="deployment_starting",
            retry_after=REACTIVATION_RETRY_AFTER,
            **common,
        )


def _pick(matches: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of several deployments with one name: a Deployed one, else any live one, else what is there."""
    for wanted in (lambda d: d.get("status") == DEPLOYED, lambda d: d.get("status") not in TERMINAL, lambda d: True):
        chosen = next((d for d in matches if wanted(d)), None)
        if chosen is not None:
            return chosen
    return None


def _deferrable(exc: LlamaStackError) -> bool:
    """Whether a set-up failure may pass at start-up: no key yet, or the vendor down, slow or failing."""
    if isinstance(exc, AuthenticationError):
        return exc.code == "missing_api_key"
    if isinstance(exc, VendorStatusError):
        return exc.vendor_status >= 500
    if isinstance(exc, (ServiceUnavailableError, ProviderTimeoutError)):
        return True
    return type(exc) is ProviderError and exc.code is None


def _field(body: Any, name: str, svc: RemoteService) -> Any:
    if not isinstance(body, dict) or body.get(name) is None:
        raise ProviderError(f"{svc.name} answered without '{name}': {excerpt(body)}", provider=svc.provider_id)
    return body[name]


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
        deployment = Deployment(model.model_id, name, self._project_for(model), self._spec_of(model, raw))
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
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
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
            if served.deployment is not None and _may_mean_not_serving(exc):
                await self._deployments.after_failure(served.deployment)
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

    def _project_for(self, model: Model) -> str:
        if not self._config.project_id:
            raise BadRequestError(
                f"{self._svc.name}: model '{model.model_id}' is served by a deployment (metadata.deployment) but the "
                "provider has no project_id; set project_id (ms-...) in its config",
                provider=self._provider_id,
                param="project_id",
                code="missing_project_id",
            )
        return self._config.project_id

    def _spec_of(self, model: Model, raw: Any) -> DeploymentSpec:
        try:
            return DeploymentSpec.model_validate(raw if raw is not None else {})
        except PydanticValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise BadRequestError(
                f"{self._svc.name}: model '{model.model_id}' has an invalid metadata.deployment: {problems}",
                provider=self._provider_id,
                param="metadata.deployment",
            ) from None

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


def _may_mean_not_serving(exc: LlamaStackError) -> bool:
    """Errors a deployment that stopped serving gives: an unknown model (404), a refusal (400), a hang."""
    if isinstance(exc, VendorStatusError):
        return exc.vendor_status == 404
    return isinstance(exc, (BadRequestError, ProviderTimeoutError))


async def _emulated_stream(
    chunk_type: Callable[..., Any], text: Any, stop_reason: StopReason | None, usage: Usage | None
) -> AsyncIterator[Any]:
    """Emissary does not stream: the whole answer as one delta, then the stop reason and usage."""
    yield chunk_type(text_delta=text, stop_reason=StopReason.not_stopped)
    yield chunk_type(text_delta="", stop_reason=stop_reason, usage=usage)
