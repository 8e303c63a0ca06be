"""The config of inline::synthetic-data: what a request gets when it leaves a setting out."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.inference import MAX_BATCH, SamplingParams
from llama_stack.apis.synthetic_data_generation import MAX_GENERATIONS_PER_PROMPT


def _sampling() -> SamplingParams:
    return SamplingParams(strategy="top_p", temperature=0.8, top_p=0.95)


class SyntheticDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        description="The served model that generates; a request's model replaces it. Unset: requests must name one.",
    )
    reward_model: str | None = Field(
        default=None,
        description="The served reward model that scores (/reward_scoring/score); a request's reward_scoring.model "
        "replaces it. Unset: requests must name one.",
    )
    num_generations: int = Field(
        default=4, ge=1, le=MAX_GENERATIONS_PER_PROMPT, description="Generations per prompt (k)."
    )
    sampling_params: SamplingParams = Field(
        default_factory=_sampling, description="How generations sample: k greedy generations would all be the same."
    )
    max_tokens: int = Field(default=256, ge=1, description="The most tokens per generation.")
    max_generations: int = Field(
        default=4096,
        ge=1,
        description="The most generations one request may ask for (prompts times num_generations); more is a 400.",
    )
    batch_size: int = Field(
        default=64,
        ge=1,
        le=MAX_BATCH,
        description=(
            "Dialogs per batch_chat_completion call when the model's provider batches. Each batch is scored as "
            "soon as it is generated, and progress is reported between batches."
        ),
    )
    max_concurrency: int = Field(
        default=4, ge=1, le=64, description="Chat calls in flight at once when the model's provider does not batch."
    )
    use_batches: bool = Field(
        default=True,
        description="Ask the model's provider for batches when it serves them; false: one call per generation.",
    )
    progress_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between progress lines in the log (and progress events in a stream)."
    )
