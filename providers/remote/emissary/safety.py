"""Safety shields on remote::emissary: a classification deployment rates the messages.

Each text goes to ``POST /v1/classification {model: config.classifier, input, data_format: "probs"}``; the
answer maps labels to probabilities, and any of ``config.unsafe_labels`` at or above the threshold is a
violation. A classifier is not tied to one kind of shield, so the shield types it backs are configured
(``shield_types``, default llama_guard); the others are refused with 501 before anything is sent.

What is classified (``config.scope``): each non-system message on its own (the default: a violation when
any is flagged), only the last one, or the conversation joined into one input.
"""

from __future__ import annotations

from typing import Any

from llama_stack.apis.common import Message, Role, SafetyViolation, ShieldType
from llama_stack.apis.errors import BadRequestError, NotSupportedError, ProviderError
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments, located
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.remote.fan_out import fan_out
from llama_stack.providers.utils.remote.messages import message_text, transcript
from llama_stack.providers.utils.remote.shields import conversation_texts, violation

from .classification import classify
from .config import EmissarySafetyConfig
from .service import emissary_service

PARAMS = ("threshold",)


class EmissarySafety(RemoteAdapter[EmissarySafetyConfig]):
    def __init__(self, config: EmissarySafetyConfig, service: RemoteService):
        super().__init__(config, service)
        self._inliner = AttachmentInliner(config.attachments)
        self._unsafe = {label.lower() for label in config.unsafe_labels}
        # The types this provider serves: the stack routes a shield_type only to a provider that serves it.
        self.shield_types = tuple(config.shield_types)

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self._check_shield_type(request.shield_type)
        threshold = self._threshold(request.params)
        texts = await conversation_texts(
            self._inliner, request.messages, model=self.config.classifier, provider=self._id
        )
        inputs = self._inputs(request.messages, texts)
        if not inputs:
            return RunShieldResponse()  # only system messages or empty ones: nothing to classify
        verdicts = await fan_out([text for _, text in inputs], self._classify, self.config.max_concurrency)
        for (where, _), probs in zip(inputs, verdicts, strict=True):
            flagged = self._flagged(probs, threshold)
            if flagged:
                return RunShieldResponse(violation=self._violation(where, flagged, probs, threshold))
        return RunShieldResponse()

    # ------------------------------------------------------------------------------------------ helpers
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
            return [("the conversation", transcript(located(messages, "messages"), texts, skip=(Role.system,)))]
        return checked

    async def _classify(self, text: str) -> dict[str, float]:
        probs = await classify(self.service, self.config.classifier, text, missing=self._missing_classifier)
        if not any(label.lower() in self._unsafe for label in probs):
            # Every answer would pass: a classifier with other labels than configured is a silent hole.
            raise ProviderError(
                f"{self.service.name}'s classifier '{self.config.classifier}' reports the labels "
                f"{', '.join(probs)}, none of the unsafe_labels ({', '.join(self.config.unsafe_labels)}); set "
                "unsafe_labels in the provider's config to the classifier's labels for unsafe content",
                provider=self._id,
            )
        return probs

    def _missing_classifier(self, exc: VendorStatusError) -> ProviderError:
        # The operator named the deployment, so this is the provider's failure (502), not the caller's.
        return ProviderError(
            f"{self.service.name} has no classification deployment '{self.config.classifier}' (404: "
            f"{exc.vendor_message}); set classifier in the provider's config to a deployed classifier's name",
            provider=self._id,
        )

    def _flagged(self, probs: dict[str, float], threshold: float) -> list[str]:
        hits = [label for label, p in probs.items() if label.lower() in self._unsafe and p >= threshold]
        return sorted(hits, key=lambda label: -probs[label])

    def _violation(self, where: str, flagged: list[str], probs: dict[str, float], threshold: float) -> SafetyViolation:
        scores = ", ".join(f"{label}={p:.2f}" for label, p in probs.items())
        details = (
            f"classifier '{self.config.classifier}' flagged {where} as {', '.join(flagged)} "
            f"(threshold {threshold:.2f}; probabilities: {scores})"
        )
        return violation(flagged, details)


async def build(config: EmissarySafetyConfig, context: ProviderContext) -> EmissarySafety:
    return EmissarySafety(config, emissary_service(config, context))
