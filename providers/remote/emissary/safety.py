"""Safety shields on remote::emissary: a classification deployment rates the messages.

Each text goes to ``POST /v1/classification {model: config.classifier, input, data_format: "probs"}``; the
answer maps labels to probabilities, and any of ``config.unsafe_labels`` at or above the threshold is a
violation. A classifier is not tied to one kind of shield, so the shield types it backs are configured
(``shield_types``, default llama_guard); the others are refused with 501 before anything is sent.

What is classified (``config.scope``): each non-system message on its own (the default: a violation when
any is flagged), only the last one, or the conversation joined into one input.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from llama_stack.apis.common import Attachment, Content, Message, Role, SafetyViolation, ShieldType
from llama_stack.apis.errors import BadRequestError, NotSupportedError, ProviderError
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError

from .config import EmissarySafetyConfig
from .service import emissary_service

SUGGESTED_USER_RESPONSE = "I can't answer that. Can I help with something else?"
PARAMS = ("threshold",)
T = TypeVar("T")


class EmissarySafety:
    def __init__(self, config: EmissarySafetyConfig, service: RemoteService):
        self.config = config
        self.service = service
        self._inliner = AttachmentInliner(config.attachments)
        self._unsafe = {label.lower() for label in config.unsafe_labels}

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self._check_shield_type(request.shield_type)
        threshold = self._threshold(request.params)
        if not request.messages:
            raise BadRequestError(
                "messages is empty: give the shield the conversation to check", param="messages", provider=self._id
            )
        texts = await self._inliner.fetch(message_contents(request.messages), model=self.config.classifier)
        inputs = self._inputs(request.messages, texts)
        if not inputs:
            return RunShieldResponse()  # only system messages or empty ones: nothing to classify
        verdicts = await bounded_all([partial(self._classify, text) for _, text in inputs], self.config.max_concurrency)
        for (where, _), probs in zip(inputs, verdicts):
            flagged = self._flagged(probs, threshold)
            if flagged:
                return RunShieldResponse(violation=self._violation(where, flagged, probs, threshold))
        return RunShieldResponse()

    async def shutdown(self) -> None:
        await self.service.aclose()

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def _id(self) -> str:
        return self.service.provider_id

    def _check_shield_type(self, shield_type: ShieldType) -> None:
        served = [t.value for t in self.config.shield_types]
        if shield_type.value in served:
            return
        raise NotSupportedError(
            f"{self.service.name} does not back {shield_type.value} shields: its classifier "
            f"'{self.config.classifier}' serves {', '.join(served)} (shield_types in the provider's config). "
            f"List {shield_type.value} there if the classifier is trained for it, or serve it from another "
            "safety provider",
            param="shield_type",
            provider=self._id,
            code="unsupported_shield_type",
        )

    def _threshold(self, params: dict[str, Any]) -> float:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise BadRequestError(
                f"{self.service.name}'s shields take no param {', '.join(map(repr, unknown))}; their params are: "
                f"{', '.join(PARAMS)}",
                param=f"params.{unknown[0]}",
                provider=self._id,
            )
        value = params.get("threshold", self.config.threshold)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise BadRequestError(
                f"params.threshold must be a probability between 0 and 1, got {value!r}",
                param="params.threshold",
                provider=self._id,
            )
        return float(value)

    def _inputs(self, messages: list[Message], texts: InlinedAttachments) -> list[tuple[str, str]]:
        """(what, text) pairs to classify, as ``config.scope`` says; system messages are the operator's."""
        checked = [
            (f"messages[{i}] ({m.role.value})", message_text(m, f"messages[{i}]", texts))
            for i, m in enumerate(messages)
            if m.role != Role.system
        ]
        checked = [(where, text) for where, text in checked if text.strip()]
        if not checked:
            return []
        if self.config.scope == "last":
            return checked[-1:]
        if self.config.scope == "joined":
            joined = "\n\n".join(
                f"{m.role.value}: {message_text(m, f'messages[{i}]', texts)}"
                for i, m in enumerate(messages)
                if m.role != Role.system
            )
            return [("the conversation", joined)]
        return checked

    async def _classify(self, text: str) -> dict[str, float]:
        body = {"model": self.config.classifier, "input": text, "data_format": "probs"}
        try:
            answer = await self.service.json("POST", "/v1/classification", json_body=body)
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            raise ProviderError(
                f"{self.service.name} has no classification deployment '{self.config.classifier}' (404: "
                f"{exc.vendor_message}); set classifier in the provider's config to a deployed classifier's name",
                provider=self._id,
            ) from None
        probs = class_probabilities(answer, self.service)
        if not any(label.lower() in self._unsafe for label in probs):
            # Every answer would pass: a classifier with other labels than configured is a silent hole.
            raise ProviderError(
                f"{self.service.name}'s classifier '{self.config.classifier}' reports the labels "
                f"{', '.join(probs)}, none of the unsafe_labels ({', '.join(self.config.unsafe_labels)}); set "
                "unsafe_labels in the provider's config to the classifier's labels for unsafe content",
                provider=self._id,
            )
        return probs

    def _flagged(self, probs: dict[str, float], threshold: float) -> list[str]:
        hits = [label for label, p in probs.items() if label.lower() in self._unsafe and p >= threshold]
        return sorted(hits, key=lambda label: -probs[label])

    def _violation(self, where: str, flagged: list[str], probs: dict[str, float], threshold: float) -> SafetyViolation:
        scores = ", ".join(f"{label}={p:.2f}" for label, p in probs.items())
        details = (
            f"classifier '{self.config.classifier}' flagged {where} as {', '.join(flagged)} "
            f"(threshold {threshold:.2f}; probabilities: {scores})"
        )
        return SafetyViolation(
            violation_type=",".join(flagged), details=details, suggested_user_response=SUGGESTED_USER_RESPONSE
        )


# ------------------------------------------------------------------------------ shared with reward scoring
def message_contents(messages: list[Message], where: str = "messages") -> list[tuple[Content, str]]:
    """Every content of the messages (tool responses included), with its field path, for the inliner."""
    items: list[tuple[Content, str]] = []
    for index, message in enumerate(messages):
        items.append((message.content, f"{where}[{index}].content"))
        for at, response in enumerate(message.tool_responses):
            items.append((response.content, f"{where}[{index}].tool_responses[{at}].content"))
    return items


def message_text(message: Message, where: str, texts: InlinedAttachments) -> str:
    """A message (at field path ``where``) as plain text: its content, then its tool calls and responses."""
    has_content = isinstance(message.content, Attachment) or bool(message.content)
    parts = [texts(message.content, f"{where}.content")] if has_content else []
    for call in message.tool_calls:
        parts.append(f"[calls tool {call.tool_name} with {json.dumps(call.arguments, sort_keys=True)}]")
    for at, response in enumerate(message.tool_responses):
        output = texts(response.content, f"{where}.tool_responses[{at}].content")
        parts.append(f"[tool {response.tool_name} returned]\n{output}")
    return "\n".join(part for part in parts if part)


def class_probabilities(answer: Any, service: RemoteService) -> dict[str, float]:
    """``data[0].probs`` of a classification answer (label -> probability), or 502 naming the provider."""
    data = answer.get("data") if isinstance(answer, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    probs = first.get("probs")
    if (
        not isinstance(probs, dict)
        or not probs
        or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probs.values())
    ):
        raise ProviderError(
            f"{service.name} answered the classification without probabilities: {json.dumps(answer)[:200]}",
            provider=service.provider_id,
        )
    return {str(label): float(p) for label, p in probs.items()}


async def bounded_all(calls: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Every call's result in order, at most ``limit`` running at a time; the first failure is raised and
    stops the calls still waiting or running (their answers would go nowhere)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def build(config: EmissarySafetyConfig, context: ProviderContext) -> EmissarySafety:
    return EmissarySafety(config, emissary_service(config, context))
