"""inline::llm-judge's config and its judges' prompts (cheap to import: pydantic only).

The default prompts are quoted in docs/providers/llm-judge.md; tests/llm_judge checks that the page and this
module say the same.
"""

from __future__ import annotations

from string import Formatter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_stack.apis.inference import MAX_BATCH
from llama_stack.apis.inspect import MAX_SYSTEM_PROMPT_LENGTH
from llama_stack.providers.utils.inference.attachments import AttachmentConfig

JudgeMode = Literal["yes_no", "rating"]

# What a judge prompt must hold, each at least once: the dialog as a transcript, and the generation judged.
PLACEHOLDERS = ("conversation", "response")
MAX_PROMPT_LENGTH = 20_000

DEFAULT_YES_NO_SYSTEM_PROMPT = "You check answers. Reply with one word: yes or no."
# The response as the assistant's next turn of the transcript. Of the wordings tried with SmolLM2-135M (see
# docs/providers/llm-judge.md), this one ranked right answers above wrong ones most often.
DEFAULT_YES_NO_PROMPT = (
    "{conversation}\nassistant: {response}\n\nIs the assistant's answer true and helpful? Answer yes or no."
)
DEFAULT_RATING_SYSTEM_PROMPT = "You rate answers. Reply with one number from 1 to 10."
DEFAULT_RATING_PROMPT = (
    "{conversation}\nassistant: {response}\n\n"
    "Rate the assistant's answer from 1 (false or useless) to 10 (true and helpful). Reply with the number only."
)


def template_problem(template: str) -> str | None:
    """Why ``template`` is no judge prompt (a placeholder missing or unknown, a stray brace); None if it is one."""
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in Formatter().parse(template) if name is not None
        ]
    except ValueError as exc:  # a single '{' or '}'
        return f"{exc}; write a literal brace as '{{{{' or '}}}}'"
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            shown = "{" + name + "}" if name else "{}"
            return f"unknown placeholder {shown}: a judge prompt has only {{conversation}} and {{response}}"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no conversion or format spec"
    missing = [name for name in PLACEHOLDERS if name not in {field[0] for field in fields}]
    if missing:
        return f"the prompt has no {' and no '.join('{' + name + '}' for name in missing)}: the judge would not see it"
    return None


def _checked_template(template: str) -> str:
    problem = template_problem(template)
    if problem is not None:
        raise ValueError(problem)
    return template


class JudgePrompt(BaseModel):
    """The messages a judge of one mode is sent for each (dialog, generation) pair."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_LENGTH,
        description=(
            "The user message: {conversation} (the dialog, one 'role: text' turn per message) and {response} (the "
            "generation judged), each at least once; write a literal brace as {{ or }}."
        ),
    )
    system_prompt: str = Field(
        max_length=MAX_SYSTEM_PROMPT_LENGTH,
        description=(
            "The system message. Empty: none is sent, and the served model's own system_prompt (if its entry "
            "has one) applies."
        ),
    )

    _check_prompt = field_validator("prompt")(_checked_template)


class LLMJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: JudgeMode = Field(
        default="yes_no",
        description=(
            "How a judge's answer becomes a score, for judges whose entry names no mode. yes_no: the probability "
            "of 'yes' against 'no' in its first token, in [0, 1]. rating: the expected 1-10 rating read from the "
            "probabilities of the rating tokens, in [1, 10]."
        ),
    )
    yes_no: JudgePrompt = Field(
        default_factory=lambda: JudgePrompt(prompt=DEFAULT_YES_NO_PROMPT, system_prompt=DEFAULT_YES_NO_SYSTEM_PROMPT),
        description="The prompts of yes_no judges (an entry's own prompt and system_prompt replace them).",
    )
    rating: JudgePrompt = Field(
        default_factory=lambda: JudgePrompt(prompt=DEFAULT_RATING_PROMPT, system_prompt=DEFAULT_RATING_SYSTEM_PROMPT),
        description="The prompts of rating judges (an entry's own prompt and system_prompt replace them).",
    )
    max_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Judge calls (or batches) of one request in flight at once.",
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=MAX_BATCH,
        description=(
            "Pairs per batch_chat_completion call, where the judge's inference provider has it (inline::llama-cpp "
            "does); otherwise each pair is one chat_completion."
        ),
    )
    max_pairs: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="The most generations one request may hold (each costs a judge call); more is a 400.",
    )
    max_request_chars: int = Field(
        default=2_000_000,
        ge=1_000,
        le=1_000_000_000,
        description=(
            "The most characters of judge prompts one request may make (each generation's prompt holds its whole "
            "dialog); more is a 400, found before any judge is called."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in dialogs and generations are read (the judge reads text only).",
    )

    def prompts(self, mode: JudgeMode) -> JudgePrompt:
        return self.yes_no if mode == "yes_no" else self.rating
