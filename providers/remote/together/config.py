"""Config of remote::together, one class per API it backs (all share url, api_key, timeout and retries)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llama_stack.providers.utils.datasets import DatasetSourceConfig
from llama_stack.providers.utils.inference.attachments import AttachmentConfig
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
        default="meta-llama/Meta-Llama-Guard-3-8B", description="The Together moderation model behind llama_guard."
    )
    excluded_categories: list[Annotated[str, Field(pattern=r"^[SsOo]\d{1,2}$")]] = Field(
        default_factory=list,
        description=(
            "Llama Guard categories (S1..S14) that do not count as violations; a shield's params can add more "
            "with excluded_categories."
        ),
    )
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in checked messages are read (images are refused: the guard reads text).",
    )


class TogetherRewardScoringConfig(TogetherConfig):
    judge_model: str | None = Field(
        default=None,
        description="The Together chat model that judges generations; unset: the request's model is sent as is.",
    )
    criteria: str = Field(
        default="helpful, correct and harmless",
        min_length=1,
        description="What the judge rewards, put into its instructions (a response is rated 0 to 10 on it).",
    )
    judge_max_tokens: int = Field(default=64, ge=8, description="The most tokens a judge's answer may use.")
    parse_retries: int = Field(
        default=1,
        ge=0,
        le=3,
        description="Times a judge answer without a readable score is asked again (with a correction) before 502.",
    )
    max_concurrency: int = Field(default=8, ge=1, description="Judge requests in flight at once.")
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in dialogs and generations are read (images are refused).",
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
    base_models: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "A request's model id -> the Together model to fine-tune; a model not listed is sent to Together as is."
        ),
    )
    n_evals: int = Field(
        default=1,
        ge=0,
        description="Evaluations on the validation dataset during a job; 0 skips it (it is then not uploaded).",
    )
    lr_scheduler_type: str = Field(
        default="linear",
        pattern="^(linear|cosine)$",
        description="How the learning rate decays from optimizer_config.lr to lr_min: linear or cosine.",
    )
    dpo_beta: float = Field(
        default=0.1, gt=0, description="DPO's beta (how far the policy may move from the reference)."
    )
    datasets: DatasetSourceConfig = Field(
        default_factory=DatasetSourceConfig,
        description=(
            "Where dataset content_urls may be read from (file:// needs file_roots, http(s):// needs allow_http), "
            "and how much."
        ),
    )


class TogetherToolRuntimeConfig(TogetherConfig):
    image_model: str = Field(
        default="black-forest-labs/FLUX.1-schnell", description="The Together image model behind image_gen."
    )
    image_steps: int = Field(default=4, ge=1, le=100, description="Diffusion steps per generated image.")
    max_images: int = Field(default=4, ge=1, le=10, description="The most images one image_gen call may ask for (n).")
