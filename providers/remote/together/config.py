"""Config of remote::together, one class per API it backs (all share url, api_key, timeout and retries)."""

from __future__ import annotations

from pydantic import Field

from llama_stack.providers.utils.remote import RemoteServiceConfig

ENV_VAR = "TOGETHER_API_KEY"
PROVIDER_DATA_KEY = "together_api_key"


class TogetherConfig(RemoteServiceConfig):
    url: str = Field(default="https://api.together.xyz/v1", description="Together's API base URL.")


class TogetherInferenceConfig(TogetherConfig):
    max_concurrency: int = Field(
        default=8, ge=1, description="Requests in flight at once when a batch is fanned out into single calls."
    )


class TogetherSafetyConfig(TogetherConfig):
    moderation_model: str = Field(
        default="meta-llama/Llama-Guard-3-8B", description="The Together moderation model behind llama_guard."
    )


class TogetherRewardScoringConfig(TogetherConfig):
    judge_model: str | None = Field(
        default=None,
        description="The Together chat model that judges generations; unset: the request's model is sent as is.",
    )


class TogetherPostTrainingConfig(TogetherConfig):
    preference_model: str | None = Field(
        default=None,
        description=(
            "The base model of preference-optimization (DPO) jobs when the request's finetuned_model is not a "
            "Hugging Face repo or an earlier Together job."
        ),
    )
    n_checkpoints: int = Field(default=1, ge=1, description="Checkpoints each fine-tuning job saves.")
    lora_for_qlora_and_dora: bool = Field(
        default=False,
        description="Together has no QLoRA or DoRA: when true, such jobs run as LoRA instead of being refused.",
    )


class TogetherToolRuntimeConfig(TogetherConfig):
    image_model: str = Field(
        default="black-forest-labs/FLUX.1-schnell", description="The Together image model behind image_gen."
    )
    image_steps: int = Field(default=4, ge=1, le=100, description="Diffusion steps per generated image.")
