"""Safety shields on remote::together: ``llama_guard`` through a Llama Guard moderation model.

The conversation goes to ``POST /chat/completions`` with ``config.moderation_model``; the model answers a
verdict, ``safe`` or ``unsafe`` followed by a line of category codes (``S1,S9``), which becomes a
:class:`SafetyViolation`. Together hosts no Prompt Guard or code-security model, so ``prompt_guard`` and
``code_guard`` are refused with 501 before anything is sent.
"""

from __future__ import annotations

import re
from typing import Any

from llama_stack.apis.common import Message, Role, SafetyViolation, ShieldType
from llama_stack.apis.errors import BadRequestError, NotSupportedError, ProviderError
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.remote.messages import message_text
from llama_stack.providers.utils.remote.openai_answers import message_content
from llama_stack.providers.utils.remote.shields import conversation_texts, violation

from .config import TogetherSafetyConfig
from .service import together_service

# Llama Guard 3's hazard taxonomy (MLCommons), the codes its verdicts name.
LLAMA_GUARD_CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
CATEGORY_CODE = re.compile(r"[SO]\d{1,2}")
PARAMS = ("excluded_categories",)
# A verdict is one or two short lines; this leaves room for a model that adds a newline or two.
VERDICT_MAX_TOKENS = 32


class TogetherSafety(RemoteAdapter[TogetherSafetyConfig]):
    # The types this provider serves: the stack routes a shield_type only to a provider that serves it.
    shield_types = (ShieldType.llama_guard,)

    def __init__(self, config: TogetherSafetyConfig, service: RemoteService):
        super().__init__(config, service)
        self._inliner = AttachmentInliner(config.attachments)

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self._check_shield_type(request.shield_type)
        excluded = {code.upper() for code in self.config.excluded_categories} | self._excluded_from_params(
            request.params
        )
        texts = await conversation_texts(
            self._inliner, request.messages, model=self.config.moderation_model, provider=self._id
        )
        messages = moderation_messages(request.messages, texts)
        if not messages:
            return RunShieldResponse()  # only system messages: nothing a user or the model said
        body = {
            "model": self.config.moderation_model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": VERDICT_MAX_TOKENS,
        }
        try:
            answer = await self.service.json("POST", "/chat/completions", json_body=body)
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            raise ProviderError(
                f"{self.service.name} has no moderation model '{self.config.moderation_model}' (404: "
                f"{exc.vendor_message}); set moderation_model in the provider's config to one of Together's "
                "moderation models",
                provider=self._id,
            ) from None
        codes = parse_verdict(message_content(answer, self.service, "the moderation request"), self.service)
        if codes is None:
            return RunShieldResponse()
        flagged = [code for code in codes if code not in excluded]
        if codes and not flagged:
            return RunShieldResponse()  # every category it named is one the caller does not count
        return RunShieldResponse(violation=self._violation(flagged))

    # ------------------------------------------------------------------------------------------ helpers
    def _check_shield_type(self, shield_type: ShieldType) -> None:
        if shield_type == ShieldType.llama_guard:
            return
        raise NotSupportedError(
            f"{self.service.name} cannot run {shield_type.value} shields: Together hosts no "
            f"{'Prompt Guard' if shield_type == ShieldType.prompt_guard else 'code-security'} model. It runs "
            "llama_guard shields only; serve this shield type from another safety provider",
            param="shield_type",
            provider=self._id,
            code="unsupported_shield_type",
        )

    def _excluded_from_params(self, params: dict[str, Any]) -> set[str]:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise BadRequestError(
                f"{self.service.name}'s llama_guard shield takes no param {', '.join(map(repr, unknown))}; "
                f"its params are: {', '.join(PARAMS)}",
                param=f"params.{unknown[0]}",
                provider=self._id,
            )
        value = params.get("excluded_categories", [])
        if not isinstance(value, list) or not all(isinstance(code, str) for code in value):
            raise BadRequestError(
                'params.excluded_categories must be a list of category codes, e.g. ["S6", "S8"]',
                param="params.excluded_categories",
                provider=self._id,
            )
        return set(check_categories(value, "params.excluded_categories", self.service))

    def _violation(self, codes: list[str]) -> SafetyViolation:
        if not codes:
            details = (
                f"Llama Guard ({self.config.moderation_model}) found the conversation unsafe (it named no category)"
            )
            return violation(["unsafe"], details)
        named = ", ".join(f"{code} ({LLAMA_GUARD_CATEGORIES.get(code, 'unknown category')})" for code in codes)
        details = f"Llama Guard ({self.config.moderation_model}) found the conversation unsafe: {named}"
        return violation(codes, details)


def check_categories(codes: list[str], where: str, service: RemoteService) -> list[str]:
    normalized = [code.strip().upper() for code in codes]
    wrong = [code for code, norm in zip(codes, normalized, strict=True) if not CATEGORY_CODE.fullmatch(norm)]
    if wrong:
        raise BadRequestError(
            f"{where}: {', '.join(map(repr, wrong))} {'is' if len(wrong) == 1 else 'are'} not Llama Guard "
            f"category codes (S1..S14: {', '.join(f'{c} {n}' for c, n in LLAMA_GUARD_CATEGORIES.items())})",
            param=where,
            provider=service.provider_id,
        )
    return normalized


# --------------------------------------------------------------------------------------- conversation
def moderation_messages(messages: list[Message], texts: InlinedAttachments) -> list[dict[str, str]]:
    """The conversation as Llama Guard's chat template takes it: user and assistant turns, alternating.

    System prompts are the operator's, not the conversation, and are left out. Tool output reaches the
    model the way a user's words do, so it is moderated as a user turn. Consecutive turns of one role are
    merged because the template refuses two in a row, and a conversation that starts with the model gets
    an empty user turn first for the same reason.
    """
    turns: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if message.role == Role.system:
            continue
        role = "assistant" if message.role == Role.assistant else "user"
        text = message_text(message, f"messages[{index}]", texts)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = "\n\n".join(t for t in (turns[-1]["content"], text) if t)
        else:
            turns.append({"role": role, "content": text})
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": ""})
    return turns


# ------------------------------------------------------------------------------------------- verdict
def parse_verdict(text: str, service: RemoteService) -> list[str] | None:
    """None for ``safe``; the category codes for ``unsafe`` (empty when it named none); 502 otherwise."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    head = lines[0].lower() if lines else ""
    if head == "safe" and len(lines) == 1:
        return None
    if head == "unsafe":
        codes = [code.strip().upper() for code in ",".join(lines[1:]).split(",") if code.strip()]
        if all(CATEGORY_CODE.fullmatch(code) for code in codes):
            return list(dict.fromkeys(codes))
    raise ProviderError(
        f"{service.name}'s moderation model answered something that is not a Llama Guard verdict "
        f"('safe', or 'unsafe' and category codes): {text[:200]!r}; check that moderation_model is a Llama "
        "Guard model",
        provider=service.provider_id,
    )


async def build(config: TogetherSafetyConfig, context: ProviderContext) -> TogetherSafety:
    return TogetherSafety(config, together_service(config, context))
