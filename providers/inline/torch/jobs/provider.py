"""inline::torch post-training: the PostTraining API over jobs that train outside the server process.

A request is checked in full (:mod:`.requests`), its job folder written and its record kept in the job store
shared with the remote providers; :mod:`.runner` starts it when there is room and watches it; the job routes
read its files (:mod:`.status`). See docs/providers/torch-post-training.md.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

from llama_stack.apis.post_training import (
    CancelTrainingJobRequest,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobInfo,
    PostTrainingJobLogStream,
    PostTrainingJobStatusResponse,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
)
from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.datasets import DatasetReader
from llama_stack.providers.utils.training.jobs import TrainingJobStore

from .config import TRAINING_MODULE, TorchPostTrainingConfig
from .models import CheckpointRoots
from .requests import DeviceProbe, PlannedJob, RequestPlanner
from .runner import JobRunner
from .status import checkpoints, job_status, launch_resources, log_lines, loss_curve

log = logging.getLogger(__name__)

JOBS_FOLDER = "jobs"
# What the built-in training process imports; checked (not imported) when the provider is built.
TRAINING_REQUIREMENTS = ("torch", "transformers", "peft")


class TorchPostTraining:
    def __init__(self, config: TorchPostTrainingConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self.jobs_dir = context.storage_dir / JOBS_FOLDER
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = TrainingJobStore(context.storage_dir, context.provider_id)
        self.planner = RequestPlanner(
            config,
            context.provider_id,
            inference=context.deps.get(Api.inference),
            datasets=context.deps.get(Api.datasets),
            reader=DatasetReader(config.datasets, provider=context.provider_id),
            roots=CheckpointRoots.of(self.jobs_dir, *config.checkpoint_roots),
            device=DeviceProbe(config.device),
        )
        self.runner = JobRunner(config, self.store, self.jobs_dir, context.provider_id)

    # ---------------------------------------------------------------------------------- training
    async def supervised_fine_tune(self, request: PostTrainingSFTRequest) -> PostTrainingJob:
        with self.store.creating(request.job_uuid):
            planned = await self.planner.sft(request)
            await self._add(planned)
        return PostTrainingJob(job_uuid=request.job_uuid)

    async def preference_optimize(self, request: PostTrainingRLHFRequest) -> PostTrainingJob:
        with self.store.creating(request.job_uuid):
            planned = await self.planner.dpo(request)
            await self._add(planned)
        return PostTrainingJob(job_uuid=request.job_uuid)

    async def _add(self, planned: PlannedJob) -> None:
        # Writing the rows may take a while for a large dataset: not on the event loop. The store and the
        # scheduler are the loop's alone, so the record is added back here.
        folder = await asyncio.to_thread(self.runner.prepare, planned)
        self.runner.add(planned, folder)

    # ---------------------------------------------------------------------------------- the jobs
    async def get_training_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        self.runner.reconcile()
        return self._status(job_uuid)

    def _status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        record = self.store.get(job_uuid)
        folder = self.runner.folder(record)
        resources = launch_resources(record, folder)
        position = self.runner.queue_position(job_uuid)
        if position is not None:
            resources["queue_position"] = position
        return job_status(record, folder, resources)

    async def get_training_job_logs(self, job_uuid: str) -> PostTrainingJobLogStream:
        folder = self.runner.folder(self.store.get(job_uuid))
        lines = await asyncio.to_thread(log_lines, folder, self.config.log_lines, self.config.log_bytes)
        return PostTrainingJobLogStream(job_uuid=job_uuid, log_lines=lines)

    async def get_training_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        folder = self.runner.folder(self.store.get(job_uuid))
        return PostTrainingJobArtifactsResponse(
            job_uuid=job_uuid, checkpoints=checkpoints(folder), loss_curve=await asyncio.to_thread(loss_curve, folder)
        )

    async def list_training_jobs(self) -> list[PostTrainingJobInfo]:
        self.runner.reconcile()
        return [
            PostTrainingJobInfo(job_uuid=record.job_uuid, status=self._status(record.job_uuid).status)
            for record in self.store.all()
        ]

    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> PostTrainingJobStatusResponse:
        await self.runner.cancel(self.store.get(request.job_uuid))
        self.runner.reconcile()
        return self._status(request.job_uuid)

    async def shutdown(self) -> None:
        """Jobs keep running: the next server on this storage adopts them."""
        await self.runner.close()
        self.store.close()


def _missing_requirements(config: TorchPostTrainingConfig) -> list[str]:
    if config.training_module != TRAINING_MODULE:
        return []  # another trainer: what it needs is its own business
    return [name for name in TRAINING_REQUIREMENTS if importlib.util.find_spec(name) is None]


async def build(config: TorchPostTrainingConfig, context: ProviderContext) -> TorchPostTraining:
    missing = _missing_requirements(config)
    if missing:
        raise ImportError(
            f"inline::torch post-training needs {', '.join(missing)}: install 'llama-stack-runtime[torch]'"
        )
    impl = TorchPostTraining(config, context)
    impl.runner.start()
    log.info("%s: jobs in %s (at most %d at once)", context.provider_id, impl.jobs_dir, config.max_concurrent_jobs)
    return impl
