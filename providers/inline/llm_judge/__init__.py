"""inline::llm-judge: reward scoring by any llm the distribution serves, as a judge whose score is read from
its token probabilities (the probability of "yes", or the expected 1-10 rating). See docs/providers/llm-judge.md.

Only declarations here: the provider's module is imported when a distribution selects it.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import LLMJudgeConfig

PROVIDER_TYPE = "inline::llm-judge"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="reward_scoring",
            provider_type=PROVIDER_TYPE,
            config_class=LLMJudgeConfig,
            factory="llama_stack.providers.inline.llm_judge.provider:build",
            depends_on=("inference",),
            description=(
                "Judges: a served llm scores each generation; the score is read from its token probabilities "
                "(P(yes), or the expected 1-10 rating)."
            ),
        )
    )
