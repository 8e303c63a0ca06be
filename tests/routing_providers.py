"""Test-only providers for the routing tests: a safety shield and a trainer that say who answered.

They stand in where no real provider of the kind exists yet (a local shield, a local trainer). Each keeps
what it must remember in its own storage folder, as a real one does, so a restarted stack finds it again.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llama_stack.apis.common import SafetyViolation, ShieldType
from llama_stack.apis.errors import NotFoundError
from llama_stack.apis.post_training import (
    CancelTrainingJobRequest,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobInfo,
    PostTrainingJobLogStream,
    PostTrainingJobStatus,
    PostTrainingJobStatusResponse,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
)
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.plugins import ProviderContext, ProviderSpec, hookimpl


class WordShieldConfig(BaseModel):
    word: str = "forbidden"
    shield_types: list[ShieldType] | None = None


class WordShield:
    """Flags a conversation holding its word; the violation names the provider (and the shield's params)."""

    def __init__(self, config: WordShieldConfig, context: ProviderContext):
        self.provider_id = context.provider_id
        self.word = config.word
        if config.shield_types is not None:
            self.shield_types = config.shield_types

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        text = " ".join(str(m.content) for m in request.messages)
        if self.word not in text:
            return RunShieldResponse()
        return RunShieldResponse(
            violation=SafetyViolation(
                violation_type=request.shield_type.value,
                details=self.provider_id,
                # What the shield was run with, for the tests to read back.
                suggested_user_response=json.dumps({"params": request.params, "shield_id": request.shield_id}),
            )
        )


class TrainerConfig(BaseModel):
    pass


class Trainer:
    """Records jobs in a JSON file in its storage folder; a job "runs" until cancelled."""

    def __init__(self, config: TrainerConfig, context: ProviderContext):
        self.provider_id = context.provider_id
        self._file = Path(context.storage_dir) / "jobs.json"
        self._file.parent.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, str] = json.loads(self._file.read_text()) if self._file.exists() else {}

    def _save(self) -> None:
        self._file.write_text(json.dumps(self.jobs))

    def _job(self, job_uuid: str) -> str:
        if job_uuid not in self.jobs:
            raise NotFoundError(f"{self.provider_id} has no job '{job_uuid}'", provider=self.provider_id)
        return self.jobs[job_uuid]

    async def _start(self, job_uuid: str) -> PostTrainingJob:
        self.jobs[job_uuid] = PostTrainingJobStatus.running.value
        self._save()
        return PostTrainingJob(job_uuid=job_uuid)

    async def supervised_fine_tune(self, request: PostTrainingSFTRequest) -> PostTrainingJob:
        return await self._start(request.job_uuid)

    async def preference_optimize(self, request: PostTrainingRLHFRequest) -> PostTrainingJob:
        return await self._start(request.job_uuid)

    async def get_training_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        return PostTrainingJobStatusResponse(
            job_uuid=job_uuid,
            status=PostTrainingJobStatus(self._job(job_uuid)),
            resources_allocated={"provider": self.provider_id},
            scheduled_at=datetime.now(timezone.utc),
        )

    async def get_training_job_logs(self, job_uuid: str) -> PostTrainingJobLogStream:
        self._job(job_uuid)
        return PostTrainingJobLogStream(job_uuid=job_uuid, log_lines=[f"trained by {self.provider_id}"])

    async def get_training_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        self._job(job_uuid)
        return PostTrainingJobArtifactsResponse(job_uuid=job_uuid)

    async def list_training_jobs(self) -> list[PostTrainingJobInfo]:
        return [PostTrainingJobInfo(job_uuid=j, status=PostTrainingJobStatus(s)) for j, s in self.jobs.items()]

    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> PostTrainingJobStatusResponse:
        self._job(request.job_uuid)
        self.jobs[request.job_uuid] = PostTrainingJobStatus.failed.value
        self._save()
        return await self.get_training_job_status(request.job_uuid)


class TrainerWithoutLogs(Trainer):
    """Lacks a method the post_training API requires: the stack must refuse to start with it."""

    get_training_job_logs = None  # type: ignore[assignment]


def build_word_shield(config: WordShieldConfig, context: ProviderContext) -> WordShield:
    return WordShield(config, context)


def build_trainer(config: TrainerConfig, context: ProviderContext) -> Trainer:
    return Trainer(config, context)


def build_trainer_without_logs(config: TrainerConfig, context: ProviderContext) -> Trainer:
    return TrainerWithoutLogs(config, context)


class DependentConfig(BaseModel):
    pass


class Dependent:
    """A synthetic-data provider that uses safety when the distribution serves it: it reports what it got."""

    def __init__(self, context: ProviderContext):
        self.deps = context.deps

    async def generate(self, request: Any) -> Any:
        raise NotImplementedError


def build_dependent(config: DependentConfig, context: ProviderContext) -> Dependent:
    return Dependent(context)


class RoutingTestPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(ProviderSpec("safety", "inline::word-shield", WordShieldConfig, "routing_providers:build_word_shield"))
        register(
            ProviderSpec("post_training", "inline::test-trainer", TrainerConfig, "routing_providers:build_trainer")
        )
        register(
            ProviderSpec(
                "post_training",
                "inline::trainer-without-logs",
                TrainerConfig,
                "routing_providers:build_trainer_without_logs",
            )
        )
        register(
            ProviderSpec(
                "synthetic_data_generation",
                "inline::dependent",
                DependentConfig,
                "routing_providers:build_dependent",
                depends_on=("inference",),
                optional_depends_on=("safety", "memory_banks"),
            )
        )
