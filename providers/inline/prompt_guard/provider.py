"""inline::prompt-guard: prompt_guard shields run by a Prompt Guard classifier in the server process.

The model (Prompt-Guard-86M, or any sequence classifier labelled BENIGN / INJECTION / JAILBREAK) is read from
``config.model_path`` when the stack starts. A request's messages (``config.scope``: every user message by
default) are each cut into overlapping windows of ``config.window_tokens`` tokens; a label's score for a message
is its highest probability over the message's windows, so a jailbreak at the end of a long text counts as much
as one at its start. A JAILBREAK or INJECTION score at or above its threshold (``params.jailbreak_threshold``,
``params.injection_threshold``, defaults in the config) is a violation naming the label, the score and where.

The classifier runs on the provider's own worker thread, one batch of windows at a time, so the event loop
keeps serving; a request that goes away stops at the next batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from llama_stack.apis.common import Message, Role, SafetyViolation, ShieldType
from llama_stack.apis.errors import (
    BadRequestError,
    LlamaStackError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.config import ConfigError
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments
from llama_stack.providers.utils.remote.messages import message_text
from llama_stack.providers.utils.remote.shields import conversation_texts, violation

from .config import PromptGuardConfig

if TYPE_CHECKING:
    from .classifier import PromptGuardClassifier, Window

PROVIDER_TYPE = "inline::prompt-guard"
REQUIREMENTS = ("llama-stack-runtime[torch]",)
# The labels a shield can flag, with the param holding each one's threshold.
THRESHOLD_PARAMS = {"JAILBREAK": "jailbreak_threshold", "INJECTION": "injection_threshold"}
# What a request refused for a full queue is told to wait: about one request's classification.
RETRY_AFTER_SECONDS = 1
SCOPE_ROLES = {"last_user": (Role.user,), "user": (Role.user,), "user_and_tool": (Role.user, Role.tool)}

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """A label whose best window scored at or above its threshold."""

    label: str
    score: float
    threshold: float
    where: str
    window: Window
    text_chars: int


class PromptGuardSafety:
    # The types this provider serves: the stack routes a shield_type only to a provider that serves it.
    shield_types = (ShieldType.prompt_guard,)

    def __init__(self, config: PromptGuardConfig, provider_id: str, classifier: PromptGuardClassifier):
        self.config = config
        self._id = provider_id
        self._classifier = classifier
        self._inliner = AttachmentInliner(config.attachments)
        # One forward pass at a time: a pass already uses every core (or the GPU).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prompt-guard[{provider_id}]")
        self._admitted = 0
        self._closed = False

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self._check_shield_type(request.shield_type)
        thresholds = self._thresholds(request.params)
        texts = await conversation_texts(self._inliner, request.messages, model="Prompt Guard", provider=self._id)
        inputs = self._inputs(request.messages, texts)
        if not inputs:
            return RunShieldResponse()  # nothing a user (or a tool) said: nothing to classify
        self._check_size(inputs)
        async with self._admission():
            scored = await self._classify([text for _, text in inputs])
        findings = self._findings(scored, inputs, thresholds)
        return RunShieldResponse(violation=self._violation(findings) if findings else None)

    async def shutdown(self) -> None:
        self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------ requests
    def _check_shield_type(self, shield_type: ShieldType) -> None:
        if shield_type == ShieldType.prompt_guard:
            return
        raise NotSupportedError(
            f"{PROVIDER_TYPE} runs prompt_guard shields only, not {shield_type.value}; serve {shield_type.value} "
            "shields from another safety provider",
            param="shield_type",
            provider=self._id,
            code="unsupported_shield_type",
        )

    def _thresholds(self, params: dict[str, Any]) -> dict[str, float]:
        """Each flaggable label's threshold: the request's param, else the config's."""
        unknown = sorted(set(params) - set(THRESHOLD_PARAMS.values()))
        if unknown:
            raise BadRequestError(
                f"prompt_guard shields take no param {', '.join(map(repr, unknown))}; their params are: "
                f"{', '.join(THRESHOLD_PARAMS.values())}",
                param=f"params.{unknown[0]}",
                provider=self._id,
            )
        thresholds = {}
        for label, name in THRESHOLD_PARAMS.items():
            value = params.get(name, getattr(self.config, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise BadRequestError(
                    f"params.{name} must be a probability between 0 and 1, got {value!r}",
                    param=f"params.{name}",
                    provider=self._id,
                )
            thresholds[label] = float(value)
        return thresholds

    def _inputs(self, messages: list[Message], texts: InlinedAttachments) -> list[tuple[str, str]]:
        """(where, text) for each message ``config.scope`` classifies; empty ones are left out."""
        roles = SCOPE_ROLES[self.config.scope]
        chosen = [(i, m) for i, m in enumerate(messages) if m.role in roles]
        if self.config.scope == "last_user":
            chosen = chosen[-1:]
        inputs = [(f"messages[{i}] ({m.role.value})", message_text(m, f"messages[{i}]", texts)) for i, m in chosen]
        return [(where, text) for where, text in inputs if text.strip()]

    def _check_size(self, inputs: list[tuple[str, str]]) -> None:
        total = sum(len(text) for _, text in inputs)
        if total > self.config.max_input_chars:
            raise BadRequestError(
                f"the messages this prompt_guard shield classifies hold {total} characters; it takes at most "
                f"{self.config.max_input_chars} per request (max_input_chars in the provider's config)",
                param="messages",
                provider=self._id,
            )

    @asynccontextmanager
    async def _admission(self) -> AsyncIterator[None]:
        """Hold one of the 1 + max_queue places; none free is a 503."""
        if self._admitted > self.config.max_queue:
            raise ServiceUnavailableError(
                f"{PROVIDER_TYPE} is busy: {self._admitted} requests are being classified or waiting (max_queue "
                f"{self.config.max_queue}); retry shortly",
                provider=self._id,
                retry_after=RETRY_AFTER_SECONDS,
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    # ---------------------------------------------------------------------------------------- the model
    async def _classify(self, texts: list[str]) -> list[Window]:
        config = self.config
        windows = await self._on_worker(self._classifier.windows, texts, config.window_tokens, config.window_overlap)
        if len(windows) > config.max_windows:
            raise BadRequestError(
                f"the messages this prompt_guard shield classifies need {len(windows)} windows of "
                f"{config.window_tokens} tokens; it classifies at most {config.max_windows} per request "
                "(max_windows in the provider's config): send less text",
                param="messages",
                provider=self._id,
            )
        scored: list[Window] = []
        # Batch by batch, each its own job: other requests' batches interleave, and a cancelled request stops here.
        for start in range(0, len(windows), config.batch_size):
            scored.extend(await self._on_worker(self._classifier.classify, windows[start : start + config.batch_size]))
        return scored

    async def _on_worker(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, work, *args)
        except LlamaStackError:
            raise
        except Exception as exc:
            if self._closed:  # the stack is stopping: this request cannot be served
                raise ServiceUnavailableError(f"{PROVIDER_TYPE} is shutting down", provider=self._id) from None
            log.exception("%s: the classifier failed", self._id)
            raise ProviderError(
                f"{PROVIDER_TYPE}: the classifier failed ({type(exc).__name__}: {str(exc)[:300]})", provider=self._id
            ) from None

    # -------------------------------------------------------------------------------------------- verdict
    def _findings(
        self, scored: list[Window], inputs: list[tuple[str, str]], thresholds: dict[str, float]
    ) -> list[Finding]:
        """The labels whose highest score over every window of every message reaches their threshold, worst first."""
        findings = []
        for label, threshold in thresholds.items():
            best = max(scored, key=lambda window: window.scores[label])
            if best.scores[label] >= threshold:
                where, text = inputs[best.text_index]
                findings.append(Finding(label, best.scores[label], threshold, where, best, len(text)))
        return sorted(findings, key=lambda finding: -finding.score)

    def _violation(self, findings: list[Finding]) -> SafetyViolation:
        parts = [
            f"{f.label} in {f.where} with score {f.score:.2f} (threshold {f.threshold:.2f}; characters "
            f"{f.window.start_char}-{f.window.end_char} of {f.text_chars})"
            for f in findings
        ]
        details = f"Prompt Guard ({self._classifier.path.name}) found {'; '.join(parts)}"
        return violation([f.label for f in findings], details)


async def build(config: PromptGuardConfig, context: ProviderContext) -> PromptGuardSafety:
    """Load the classifier (importing torch and transformers) on a thread, so the start's event loop is free."""
    try:
        classifier = await asyncio.to_thread(_load, config)
    except ImportError as exc:
        raise ImportError(
            f"provider {PROVIDER_TYPE} cannot be loaded: {exc}; install {' '.join(map(repr, REQUIREMENTS))}"
        ) from exc
    except ConfigError as exc:
        raise ConfigError(f"provider '{context.provider_id}' ({PROVIDER_TYPE}): {exc}") from None
    return PromptGuardSafety(config, context.provider_id, classifier)


def _load(config: PromptGuardConfig) -> PromptGuardClassifier:
    from .classifier import load_classifier  # torch and transformers: only once the provider is selected

    return load_classifier(config.model_path, config.device, config.window_tokens)
