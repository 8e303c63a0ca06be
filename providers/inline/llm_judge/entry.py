"""A judge's ``models:`` entry, checked when it registers: a bad one fails the start (or the registration) with a
400 naming the model and the field.

An entry looks like::

    - model_id: judge
      provider_id: llm-judge
      provider_model_id: smollm2-135m-instruct   # a served llm (its model_id or an alias)
      model_type: reward
      system_prompt: ...                         # optional: the judge's system message
      metadata: {mode: yes_no, prompt: "...{conversation}...{response}..."}   # both optional
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, get_args

from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.inspect import Model

from .config import MAX_PROMPT_LENGTH, JudgeMode, LLMJudgeConfig, template_problem

# The metadata keys a judge entry may set (description: free text, as other entries have).
METADATA_KEYS = ("mode", "prompt", "description")
MODES: tuple[str, ...] = get_args(JudgeMode)


@dataclass(frozen=True)
class JudgeEntry:
    """What scoring needs to know about one judge."""

    model_id: str
    served_model: str  # the inference model that answers, by its model_id
    mode: JudgeMode
    prompt: str
    system_prompt: str  # empty: no system message

    def describe(self) -> str:
        return f"judge {self.model_id!r} (inference model {self.served_model!r}, mode {self.mode})"


def read_entry(model: Model, config: LLMJudgeConfig, served: Iterable[Model] | None, provider_id: str) -> JudgeEntry:
    """The entry checked; ``served`` are the inference API's models (None when it cannot list them: the served
    model is then only found out at the first request)."""

    def bad(message: str, param: str) -> BadRequestError:
        return BadRequestError(f"model {model.model_id!r}: {message}", provider=provider_id, param=param)

    if model.model_type != "reward":
        raise bad(
            f"{provider_id} (inline::llm-judge) serves judges, which are reward models; set model_type: reward "
            f"(it is {model.model_type!r})",
            "model_type",
        )
    metadata: dict[str, Any] = model.metadata
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        hint = " (a judge's system prompt is the entry's own system_prompt field)" if "system_prompt" in unknown else ""
        raise bad(
            f"unknown metadata key(s) {', '.join(map(repr, unknown))}; a judge entry's metadata may set "
            f"{', '.join(METADATA_KEYS)}{hint}",
            f"metadata.{unknown[0]}",
        )
    mode = metadata.get("mode", config.mode)
    if mode not in MODES:
        raise bad(f"metadata.mode must be one of {', '.join(MODES)}, not {mode!r}", "metadata.mode")
    defaults = config.prompts(mode)
    prompt = metadata.get("prompt", defaults.prompt)
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_LENGTH:
        raise bad(
            f"metadata.prompt must be a non-empty text of at most {MAX_PROMPT_LENGTH} characters", "metadata.prompt"
        )
    problem = template_problem(prompt)
    if problem is not None:
        raise bad(f"metadata.prompt: {problem}", "metadata.prompt")
    system_prompt = defaults.system_prompt if model.system_prompt is None else model.system_prompt
    return JudgeEntry(
        model_id=model.model_id,
        served_model=_served_model(model, served, bad),
        mode=mode,
        prompt=prompt,
        system_prompt=system_prompt,
    )


def _served_model(model: Model, served: Iterable[Model] | None, bad: Any) -> str:
    """The model_id of the llm the entry's provider_model_id names."""
    name = model.provider_model_id
    if name is None:
        raise bad(
            "set provider_model_id to the served inference model (an llm's model_id or alias) that judges",
            "provider_model_id",
        )
    if served is None:
        return name
    llms = [m for m in served if m.model_type == "llm"]
    by_name = {alias: m for m in llms for alias in (m.model_id, *m.aliases)}
    found = by_name.get(name)
    if found is None:
        listed = ", ".join(sorted(m.model_id for m in llms)) or "none"
        raise bad(
            f"provider_model_id {name!r} is not an llm this distribution's inference API serves (its llms: {listed})",
            "provider_model_id",
        )
    return found.model_id
