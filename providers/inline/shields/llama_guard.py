"""inline::llama-guard: ``llama_guard`` shields judged by a Llama Guard 3 model the distribution serves.

The shield writes Llama Guard 3's own prompt (its task line, the hazard categories S1..S14 less the excluded
ones, the conversation as ``User:`` / ``Agent:`` turns, and the request to assess only the last message) and
sends it as a text completion to ``config.model`` through the inference API, greedy and short. A completion
rather than a chat: the prompt is the whole input Llama Guard was trained on, whatever chat template the
serving provider would otherwise apply (a Llama Guard GGUF's own template would wrap it a second time).

The verdict is ``safe``, or ``unsafe`` and a line of category codes. Anything else is a violation saying the
answer could not be read: a guard that cannot be understood never passes a conversation. An inference
failure is raised (502, or 503/504 when the model is busy or slow), never taken for a pass.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llama_stack.apis.common import Message, Role, SafetyViolation, ShieldType
from llama_stack.apis.errors import (
    BadRequestError,
    LlamaStackError,
    NotSupportedError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
)
from llama_stack.apis.inference import CompletionRequest, Inference, SamplingParams
from llama_stack.apis.registry import Api
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner
from llama_stack.providers.utils.remote.messages import message_text
from llama_stack.providers.utils.remote.shields import conversation_texts, violation

from .config import LlamaGuardConfig

log = logging.getLogger(__name__)

# Llama Guard 3's hazard taxonomy (the MLCommons categories): code -> (name, what it covers).
CATEGORIES: dict[str, tuple[str, str]] = {
    "S1": ("Violent Crimes", "Helping with, encouraging or praising violence against people or animals."),
    "S2": ("Non-Violent Crimes", "Helping with fraud, theft, hacking, drug crimes or other crimes without violence."),
    "S3": ("Sex-Related Crimes", "Helping with, encouraging or excusing sexual assault, harassment or trafficking."),
    "S4": ("Child Sexual Exploitation", "Any sexual content involving minors, or help in abusing them."),
    "S5": ("Defamation", "False statements of fact that could damage a real, living person's reputation."),
    "S6": ("Specialized Advice", "Financial, medical or legal advice given as if by a professional, unqualified."),
    "S7": ("Privacy", "Revealing sensitive personal information about private individuals."),
    "S8": ("Intellectual Property", "Reproducing or helping to infringe copyrights, trademarks or patents."),
    "S9": (
        "Indiscriminate Weapons",
        "Helping to make chemical, biological, radiological, nuclear or explosive weapons.",
    ),
    "S10": ("Hate", "Demeaning or dehumanizing people for who they are (race, religion, gender, disability, ...)."),
    "S11": ("Suicide & Self-Harm", "Encouraging or helping with suicide, self-injury or disordered eating."),
    "S12": ("Sexual Content", "Sexually explicit content."),
    "S13": ("Elections", "False information about voting: when, where or how to vote, or who may."),
    "S14": (
        "Code Interpreter Abuse",
        "Code that abuses an interpreter: escapes, denial of service, privilege escalation.",
    ),
}
PARAMS = ("excluded_categories",)
# Characters kept of an unreadable answer in the violation's details.
ANSWER_SHOWN = 200

# The guard's own markup, which text in a message must not be able to write: Llama 3's special tokens (a
# completion prompt is tokenized with them) and the prompt's section markers.
_SPECIAL_TOKEN = re.compile(r"<\|")
_SECTION_MARKER = re.compile(r"<(?=\s*(BEGIN|END) (CONVERSATION|UNSAFE CONTENT CATEGORIES))", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    """One message as the guard reads it: ``User`` or ``Agent``, and its text."""

    speaker: str
    text: str


# ------------------------------------------------------------------------------------------------ prompt
def neutralized(text: str) -> str:
    """``text`` unable to close the conversation block or write a special token (a space after each ``<``)."""
    return _SECTION_MARKER.sub("< ", _SPECIAL_TOKEN.sub("< |", text))


def guard_prompt(turns: list[Turn], excluded: set[str], describe: bool) -> str:
    """Llama Guard 3's prompt for the last turn of ``turns`` (the serving provider adds the BOS token)."""
    speaker = turns[-1].speaker
    categories = []
    for code, (name, description) in CATEGORIES.items():
        if code in excluded:
            continue
        categories.append(f"{code}: {name}." + (f"\n{description}" if describe else ""))
    conversation = "\n\n".join(f"{turn.speaker}: {neutralized(turn.text)}" for turn in turns)
    return (
        "<|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{speaker}' messages in conversations according our safety "
        "policy with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + "\n".join(categories) + "\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n" + conversation + "\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {speaker} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def fitted(turns: list[Turn], max_messages: int, max_chars: int) -> list[Turn] | None:
    """The most recent turns within both bounds (older context is what gives way); None when the last turn
    alone is longer than ``max_chars``."""
    if len(turns[-1].text) > max_chars:
        return None
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns[-max_messages:]):
        if used + len(turn.text) > max_chars:
            break
        kept.append(turn)
        used += len(turn.text)
    return kept[::-1]


# ----------------------------------------------------------------------------------------------- verdict
class UnreadableVerdict(ValueError):
    """The guard model's answer is not a Llama Guard verdict."""


def parse_verdict(answer: str) -> list[str] | None:
    """None for ``safe``; the category codes for ``unsafe`` (empty when it named none)."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        raise UnreadableVerdict("it was empty")
    head = lines[0].lower()
    if head == "safe" and len(lines) == 1:
        return None
    if head != "unsafe":
        raise UnreadableVerdict("its first line is neither 'safe' nor 'unsafe'")
    if len(lines) > 2:
        raise UnreadableVerdict("it has more than the verdict and a line of categories")
    codes = [code.strip().upper() for code in lines[1].split(",")] if len(lines) == 2 else []
    unknown = [code for code in codes if code not in CATEGORIES]
    if unknown:
        raise UnreadableVerdict(f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not S1..S14")
    return list(dict.fromkeys(codes))


# ---------------------------------------------------------------------------------------------- provider
class LlamaGuardShield:
    # The stack routes a shield_type only to a provider that serves it.
    shield_types = (ShieldType.llama_guard,)

    def __init__(self, config: LlamaGuardConfig, context: ProviderContext, inference: Inference):
        self.config = config
        self.provider_id = context.provider_id
        self.inference = inference
        self._inliner = AttachmentInliner(config.attachments)
        self._excluded = {code.strip().upper() for code in config.excluded_categories}  # S1..S14: the config checked

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self._check_shield_type(request.shield_type)
        excluded = self._excluded | self._excluded_from_params(request.params)
        texts = await conversation_texts(
            self._inliner, request.messages, model=self.config.model, provider=self.provider_id
        )
        turns = [
            Turn(speaker_of(message), message_text(message, f"messages[{index}]", texts))
            for index, message in enumerate(request.messages)
            if message.role != Role.system  # the operator's instructions, not the conversation
        ]
        if not any(turn.text.strip() for turn in turns):
            return RunShieldResponse()  # nothing anyone said: no verdict to ask for
        kept = fitted(turns, self.config.max_messages, self.config.max_chars)
        if kept is None:
            return RunShieldResponse(violation=self._too_long(len(turns[-1].text)))
        answer = await self._ask(guard_prompt(kept, excluded, self.config.describe_categories))
        try:
            codes = parse_verdict(answer)
        except UnreadableVerdict as exc:
            return RunShieldResponse(violation=self._unreadable(answer, str(exc)))
        if codes is None:
            return RunShieldResponse()
        flagged = [code for code in codes if code not in excluded]
        if codes and not flagged:
            return RunShieldResponse()  # it only named categories the caller does not count
        return RunShieldResponse(violation=self._unsafe(kept[-1].speaker, flagged))

    # ------------------------------------------------------------------------------------------ helpers
    def _check_shield_type(self, shield_type: ShieldType) -> None:
        if shield_type != ShieldType.llama_guard:
            raise NotSupportedError(
                f"inline::llama-guard runs llama_guard shields only, not {shield_type.value}; serve "
                f"{shield_type.value} from another safety provider",
                param="shield_type",
                provider=self.provider_id,
                code="unsupported_shield_type",
            )

    def _excluded_from_params(self, params: dict[str, Any]) -> set[str]:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise BadRequestError(
                f"llama_guard shields take no param {', '.join(map(repr, unknown))}; their params are: "
                f"{', '.join(PARAMS)}",
                param=f"params.{unknown[0]}",
                provider=self.provider_id,
            )
        value = params.get("excluded_categories", [])
        if not isinstance(value, list) or not all(isinstance(code, str) for code in value):
            raise BadRequestError(
                'params.excluded_categories must be a list of category codes, e.g. ["S6", "S8"]',
                param="params.excluded_categories",
                provider=self.provider_id,
            )
        excluded = set(check_categories(value, "params.excluded_categories", self.provider_id))
        if self._excluded | excluded >= set(CATEGORIES):
            raise BadRequestError(
                "params.excluded_categories: with these and the provider's excluded_categories, every category "
                "S1..S14 is excluded and nothing would be checked",
                param="params.excluded_categories",
                provider=self.provider_id,
            )
        return excluded

    async def _ask(self, prompt: str) -> str:
        """The guard model's answer to ``prompt``; its failure raised as this provider's, never a pass."""
        request = CompletionRequest(
            model=self.config.model,
            content=prompt,
            sampling_params=SamplingParams(strategy="greedy", temperature=0.0),
            max_tokens=self.config.max_tokens,
        )
        where = f"the guard model '{self.config.model}'"
        try:
            response = await self.inference.completion(request)
        except (ServiceUnavailableError, ProviderTimeoutError) as exc:
            raise type(exc)(
                f"{where} could not answer: {exc.message}; the conversation was not checked",
                provider=self.provider_id,
                retry_after=exc.retry_after,
            ) from exc
        except LlamaStackError as exc:
            raise ProviderError(
                f"{where} failed ({exc.status} from inference: {exc.message}); the conversation was not checked. "
                "Check that the provider's config names in `model` a Llama Guard model the distribution serves",
                provider=self.provider_id,
            ) from exc
        except Exception as exc:
            log.exception("%s: the guard model failed", self.provider_id)
            raise ProviderError(
                f"{where} failed unexpectedly (see the server log); the conversation was not checked",
                provider=self.provider_id,
            ) from exc
        content = getattr(response, "content", None)
        if not isinstance(content, str):
            raise ProviderError(
                f"{where} answered no text ({type(content).__name__}); the conversation was not checked",
                provider=self.provider_id,
            )
        return content

    def _unsafe(self, speaker: str, codes: list[str]) -> SafetyViolation:
        if not codes:
            return violation(
                ["unsafe"],
                f"Llama Guard ({self.config.model}) found the last {speaker} message unsafe (no category named)",
            )
        named = ", ".join(f"{code} ({CATEGORIES[code][0]})" for code in codes)
        return violation(codes, f"Llama Guard ({self.config.model}) found the last {speaker} message unsafe: {named}")

    def _unreadable(self, answer: str, why: str) -> SafetyViolation:
        shown = answer[:ANSWER_SHOWN] + ("..." if len(answer) > ANSWER_SHOWN else "")
        return violation(
            ["unreadable_verdict"],
            f"the guard model's answer could not be read: {why} ({shown!r}; expected 'safe', or 'unsafe' and a line "
            f"of category codes). Not passed: check that '{self.config.model}' is a Llama Guard model",
        )

    def _too_long(self, length: int) -> SafetyViolation:
        return violation(
            ["too_long"],
            f"the last message ({length} characters) is longer than the guard reads (max_chars {self.config.max_chars} "
            "in the provider's config): not checked, so not passed",
        )


def speaker_of(message: Message) -> str:
    """Llama Guard's name for who wrote a message; a tool's output reaches the model as a user's words do."""
    return "Agent" if message.role == Role.assistant else "User"


def check_categories(codes: Iterable[str], where: str, provider_id: str) -> list[str]:
    normalized = [code.strip().upper() for code in codes]
    wrong = sorted({code for code in normalized if code not in CATEGORIES})
    if wrong:
        raise BadRequestError(
            f"{where}: {', '.join(map(repr, wrong))} {'is' if len(wrong) == 1 else 'are'} not Llama Guard 3 "
            f"categories ({', '.join(f'{code} {name}' for code, (name, _) in CATEGORIES.items())})",
            param=where,
            provider=provider_id,
        )
    return normalized


def build(config: LlamaGuardConfig, context: ProviderContext) -> LlamaGuardShield:
    return LlamaGuardShield(config, context, context.deps[Api.inference])
