"""Post-training: supervised fine-tuning and preference optimization jobs, their status, logs and artifacts."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import Discriminator, Field, Tag, model_validator

from .common import URL, JsonObject, ProviderId, Schema
from .datasets import Dataset
from .dispatch import AllProviders, ByOwner, Creates, dispatch
from .routes import webmethod

# Extension: a training request may name a dataset created with /datasets/create by its uuid instead of
# spelling it out.
DatasetUUID = Annotated[
    str, Field(min_length=1, max_length=256, description="The uuid of a dataset created with /datasets/create.")
]


class OptimizerType(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class OptimizerConfig(Schema):
    optimizer_type: OptimizerType
    lr: float
    lr_min: float
    weight_decay: float


class TrainingConfig(Schema):
    n_epochs: int
    batch_size: int
    shuffle: bool
    n_iters: int
    enable_activation_checkpointing: bool
    memory_efficient_fsdp_wrap: bool
    fsdp_cpu_offload: bool


class FinetuningAlgorithm(str, Enum):
    full = "full"
    lora = "lora"
    qlora = "qlora"
    dora = "dora"


class LoraFinetuningConfig(Schema):
    lora_attn_modules: list[str]
    apply_lora_to_mlp: bool
    apply_lora_to_output: bool
    rank: int
    alpha: int


class QLoraFinetuningConfig(Schema):
    lora_attn_modules: list[str]
    apply_lora_to_mlp: bool
    apply_lora_to_output: bool
    rank: int
    alpha: int


class DoraFinetuningConfig(Schema):
    lora_attn_modules: list[str]
    apply_lora_to_mlp: bool
    apply_lora_to_output: bool
    rank: int
    alpha: int


# The seed's algorithm_config is a oneOf of three configs with the same fields, so the JSON alone cannot
# say which one it is; the request's `algorithm` does. PostTrainingSFTRequest tags the incoming object
# with its `algorithm` (see _tag_algorithm_config) and this discriminator picks the config class from
# that tag: "qlora" gives a QLoraFinetuningConfig, and so on. An object given without a tag (algorithm
# "full", which the seed still makes send a config, or one validated on its own) validates as the
# LoraFinetuningConfig shape. An instance passed from Python keeps its class.
_ADAPTER_CONFIGS: dict[str, type[Schema]] = {
    FinetuningAlgorithm.lora.value: LoraFinetuningConfig,
    FinetuningAlgorithm.qlora.value: QLoraFinetuningConfig,
    FinetuningAlgorithm.dora.value: DoraFinetuningConfig,
}


class _TaggedConfig(dict[str, Any]):
    """A JSON object of algorithm_config, carrying the request's algorithm for the discriminator."""

    tag: str = FinetuningAlgorithm.lora.value


def _algorithm_config_tag(value: Any) -> str:
    for tag, config_class in _ADAPTER_CONFIGS.items():
        if type(value) is config_class:
            return tag
    return getattr(value, "tag", FinetuningAlgorithm.lora.value)


FinetuningAlgorithmConfig = Annotated[
    Annotated[LoraFinetuningConfig, Tag(FinetuningAlgorithm.lora.value)]
    | Annotated[QLoraFinetuningConfig, Tag(FinetuningAlgorithm.qlora.value)]
    | Annotated[DoraFinetuningConfig, Tag(FinetuningAlgorithm.dora.value)],
    Discriminator(_algorithm_config_tag),
]


class PostTrainingSFTRequest(Schema):
    """Request to finetune a model."""

    job_uuid: str
    provider_id: ProviderId | None = Field(
        default=None,
        description="Extension: the provider that runs the job; unset: the provider serving the model, else the post_training API's first provider.",
    )
    # The seed enumerates llama3_8b / llama3_70b; any model id the distribution knows is accepted.
    model: str = Field(description="A model id the distribution serves.")
    dataset: Dataset | DatasetUUID
    validation_dataset: Dataset | DatasetUUID
    algorithm: FinetuningAlgorithm
    algorithm_config: FinetuningAlgorithmConfig
    optimizer_config: OptimizerConfig
    training_config: TrainingConfig
    hyperparam_search_config: JsonObject = Field(default_factory=dict)
    logger_config: JsonObject = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _tag_algorithm_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and type(data.get("algorithm_config")) is dict:
            algorithm = data.get("algorithm")
            algorithm = getattr(algorithm, "value", algorithm)
            if algorithm in _ADAPTER_CONFIGS:
                config = _TaggedConfig(data["algorithm_config"])
                config.tag = algorithm
                data = {**data, "algorithm_config": config}
        return data

    @model_validator(mode="after")
    def _config_matches_algorithm(self) -> PostTrainingSFTRequest:
        expected = _ADAPTER_CONFIGS.get(self.algorithm.value)
        if expected is not None and type(self.algorithm_config) is not expected:
            raise ValueError(
                f"algorithm {self.algorithm.value!r} needs a {expected.__name__} as algorithm_config, "
                f"not a {type(self.algorithm_config).__name__}"
            )
        return self


class RLHFAlgorithm(str, Enum):
    dpo = "dpo"
    grpo = "grpo"  # extension: group relative policy optimization, where a provider offers it


class DPOAlignmentConfig(Schema):
    reward_scale: float
    reward_clip: float
    epsilon: float
    gamma: float


class GRPOAlignmentConfig(Schema):
    """Extension: GRPO scores groups of sampled answers with reward functions."""

    reward_functions: dict[str, float] = Field(
        min_length=1, description="Reward function name -> weight (the provider lists the functions it has)."
    )
    num_generations: int = Field(default=4, ge=2, description="Answers sampled per prompt.")


class PostTrainingRLHFRequest(Schema):
    """Request to finetune a model."""

    job_uuid: str
    provider_id: ProviderId | None = Field(
        default=None,
        description="Extension: the provider that runs the job; unset: the post_training API's first provider.",
    )
    finetuned_model: URL
    dataset: Dataset | DatasetUUID
    validation_dataset: Dataset | DatasetUUID
    algorithm: RLHFAlgorithm
    algorithm_config: DPOAlignmentConfig | GRPOAlignmentConfig
    optimizer_config: OptimizerConfig
    training_config: TrainingConfig
    hyperparam_search_config: JsonObject = Field(default_factory=dict)
    logger_config: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _config_matches_algorithm(self) -> PostTrainingRLHFRequest:
        expected = GRPOAlignmentConfig if self.algorithm == RLHFAlgorithm.grpo else DPOAlignmentConfig
        if not isinstance(self.algorithm_config, expected):
            raise ValueError(f"algorithm {self.algorithm.value!r} needs a {expected.__name__} as algorithm_config")
        return self


class PostTrainingJob(Schema):
    """A post-training job that was accepted; follow it with the job routes."""

    # Not in the seed, which answers both training routes with an empty 200.
    job_uuid: str


class PostTrainingJobStatus(str, Enum):
    running = "running"
    completed = "completed"
    failed = "failed"
    scheduled = "scheduled"


class Checkpoint(Schema):
    """A checkpoint written by a post-training job."""

    iters: int
    path: URL


class TrainingProgress(Schema):
    """Extension: where a running (or ended) job is, as its trainer last said."""

    epoch: int = Field(ge=0)
    step: int = Field(ge=0, description="Optimizer steps done.")
    total_steps: int = Field(ge=0, description="Optimizer steps the job will take in all (0: not known yet).")


class PostTrainingJobStatusResponse(Schema):
    """Status of a finetuning job."""

    job_uuid: str
    status: PostTrainingJobStatus
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    resources_allocated: JsonObject | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    error: str | None = Field(
        default=None, description="Extension: why a failed job failed (a cancelled job is failed, 'cancelled ...')."
    )
    progress: TrainingProgress | None = Field(default=None, description="Extension: how far a job has come.")


class PostTrainingJobLogStream(Schema):
    """Stream of logs from a finetuning job."""

    job_uuid: str
    log_lines: list[str] = Field(default_factory=list)


class PostTrainingJobArtifactsResponse(Schema):
    """Artifacts of a finetuning job."""

    job_uuid: str
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    loss_curve: str | None = Field(
        default=None,
        description="Extension: the training and validation loss by step, as a data:image/png;base64 URL.",
    )


class PostTrainingJobInfo(Schema):
    """Extension: one job in the job listing."""

    job_uuid: str
    status: PostTrainingJobStatus


class CancelTrainingJobRequest(Schema):
    """Extension: stop a job; its checkpoints so far stay available."""

    job_uuid: str


@runtime_checkable
class PostTraining(Protocol):
    @webmethod("POST", "/post_training/supervised_fine_tune/")
    @dispatch(
        Creates(
            resource="job", field="request.job_uuid", provider_field="request.provider_id", model_field="request.model"
        )
    )
    async def supervised_fine_tune(self, request: PostTrainingSFTRequest) -> PostTrainingJob:
        """Start a supervised fine-tuning job."""
        ...

    @webmethod("POST", "/post_training/preference_optimize/")
    @dispatch(Creates(resource="job", field="request.job_uuid", provider_field="request.provider_id"))
    async def preference_optimize(self, request: PostTrainingRLHFRequest) -> PostTrainingJob:
        """Start a preference optimization (RLHF) job."""
        ...

    @webmethod("GET", "/post_training/job/status")
    @dispatch(ByOwner(resource="job", field="job_uuid"))
    async def get_training_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        """The status of a post-training job."""
        ...

    @webmethod("GET", "/post_training/job/logs")
    @dispatch(ByOwner(resource="job", field="job_uuid"))
    async def get_training_job_logs(self, job_uuid: str) -> PostTrainingJobLogStream:
        """The log lines of a post-training job so far."""
        ...

    @webmethod("GET", "/post_training/job/artifacts")
    @dispatch(ByOwner(resource="job", field="job_uuid"))
    async def get_training_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        """The checkpoints a post-training job has written."""
        ...

    @webmethod("GET", "/post_training/jobs")
    @dispatch(AllProviders(resource="job", item_field="job_uuid"))
    async def list_training_jobs(self) -> list[PostTrainingJobInfo]:
        """Extension: the post-training jobs this provider knows, with their status."""
        ...

    @webmethod("POST", "/post_training/job/cancel")
    @dispatch(ByOwner(resource="job", field="request.job_uuid"))
    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> PostTrainingJobStatusResponse:
        """Extension: cancel a job; answers its status after the cancel request."""
        ...
