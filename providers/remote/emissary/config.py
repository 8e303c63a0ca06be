"""Config of remote::emissary, one class per API it backs (all share url, api_key, timeout and retries)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llama_stack.apis.common import ShieldType
from llama_stack.providers.utils.datasets import DatasetSourceConfig
from llama_stack.providers.utils.inference.attachments import AttachmentConfig
from llama_stack.providers.utils.remote import RemoteServiceConfig

ENV_VAR = "EMISSARY_API_KEY"
PROVIDER_DATA_KEY = "emissary_api_key"
# Emissary's dataset upload takes files of at most 5 MB.
EMISSARY_MAX_DATASET_BYTES = 5 * 1024 * 1024


class EmissaryConfig(RemoteServiceConfig):
    url: str = Field(default="https://api.withemissary.com", description="Emissary's API base URL (paths add /v1).")


class EmissaryInferenceConfig(EmissaryConfig):
    project_id: str | None = Field(
        default=None, description="The Emissary project (ms-...) whose deployments serve fine-tuned models."
    )
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight at once for batches.")
    deployment_wait: float = Field(
        default=600.0, ge=0, description="Seconds to wait for a new deployment to come up at start-up."
    )
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between deployment status checks.")
    status_recheck_interval: float = Field(
        default=5.0,
        ge=0,
        description=(
            "While a deployment is not up, requests re-check its status at most this often; in between they "
            "answer 503 from the last status seen (0: every request checks)."
        ),
    )


class EmissarySafetyConfig(EmissaryConfig):
    classifier: str = Field(description="The classification deployment (its name) behind the shields.")
    unsafe_labels: list[str] = Field(
        default_factory=lambda: ["unsafe"],
        min_length=1,
        description="Labels that are violations (compared case-insensitively).",
    )
    threshold: float = Field(default=0.5, ge=0, le=1, description="The probability from which a label counts.")
    shield_types: list[ShieldType] = Field(
        default_factory=lambda: [ShieldType.llama_guard],
        min_length=1,
        description="The shield types the classifier backs; others are refused with 501.",
    )
    scope: Literal["each", "last", "joined"] = Field(
        default="each",
        description=(
            "What is classified: each message on its own (a violation if any is flagged), only the last "
            "message, or the whole conversation joined into one input. System messages are never sent."
        ),
    )
    max_concurrency: int = Field(default=8, ge=1, description="Classification requests in flight at once.")
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in checked messages are read (images are refused: the classifier reads text).",
    )


class EmissaryRewardScoringConfig(EmissaryConfig):
    score_label: str | None = Field(
        default=None,
        description="The classifier label whose probability is the score; unset: the last label it reports.",
    )
    max_concurrency: int = Field(default=8, ge=1, description="Classification requests in flight at once.")
    attachments: AttachmentConfig = Field(
        default_factory=AttachmentConfig,
        description="How text attachments in dialogs and generations are read (images are refused).",
    )


class EmissaryPostTrainingConfig(EmissaryConfig):
    project_id: str | None = Field(default=None, description="The project (ms-...) jobs go in; unset: created.")
    project_name: str = Field(default="llama-stack", description="The name of the project created when unset.")
    base_models: dict[str, str] = Field(
        default_factory=dict,
        description="A request's model id -> the Emissary base model to train; a model not listed is sent as is.",
    )
    preference_model: str | None = Field(
        default=None,
        description=(
            "The base model of GRPO jobs whose finetuned_model is not an Emissary training job of this provider."
        ),
    )
    datasets: DatasetSourceConfig = Field(
        default_factory=lambda: DatasetSourceConfig(max_bytes=EMISSARY_MAX_DATASET_BYTES),
        description=(
            "Where dataset content_urls may be read from (file:// needs file_roots, http(s):// needs allow_http); "
            "Emissary takes 5 MiB at most."
        ),
    )
