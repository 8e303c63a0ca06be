"""Config of remote::emissary, one class per API it backs (all share url, api_key, timeout and retries)."""

from __future__ import annotations

from pydantic import Field

from llama_stack.providers.utils.remote import RemoteServiceConfig

ENV_VAR = "EMISSARY_API_KEY"
PROVIDER_DATA_KEY = "emissary_api_key"


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


class EmissarySafetyConfig(EmissaryConfig):
    classifier: str = Field(description="The classification deployment (its name) behind the shields.")
    unsafe_labels: list[str] = Field(default_factory=lambda: ["unsafe"], description="Labels that are violations.")
    threshold: float = Field(default=0.5, ge=0, le=1, description="The probability from which a label counts.")


class EmissaryRewardScoringConfig(EmissaryConfig):
    score_label: str | None = Field(
        default=None,
        description="The classifier label whose probability is the score; unset: the last label it reports.",
    )


class EmissaryPostTrainingConfig(EmissaryConfig):
    project_id: str | None = Field(default=None, description="The project (ms-...) jobs go in; unset: created.")
    project_name: str = Field(default="llama-stack", description="The name of the project created when unset.")
