"""remote::emissary post-training: supervised fine-tuning and (as an extension) GRPO as Emissary training jobs.

Jobs live in an Emissary project: the configured ``project_id``, or the project named ``project_name``
(found with ``GET /v1/projects``, created once when missing). A request is checked before anything is
created: DPO, QLoRA and DoRA are refused with 501 (Emissary has none of them), an SGD optimizer, a
hyperparameter search or a logger config with 400, a base model or testing function Emissary does not
list with 400, a dataset over Emissary's 5 MB with 400. Then the datasets are uploaded
(``POST .../datasets``) and the job created (``POST .../training-jobs`` or ``.../training-jobs/grpo``,
never retried after a dropped connection). Emissary has no logs route: log lines are made from the
job's status, progress and training loss. See docs/providers/emissary-post-training.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import urllib.parse
from typing import Any

from llama_stack.apis.datasets import Dataset
from llama_stack.apis.errors import BadRequestError, NotSupportedError
from llama_stack.apis.post_training import (
    Checkpoint,
    FinetuningAlgorithm,
    GRPOAlignmentConfig,
    PostTrainingJob,
    PostTrainingJobStatus,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
    RLHFAlgorithm,
)
from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.datasets import (
    DatasetReader,
    file_extension,
    read_training_data,
    resolve_training_datasets,
)
from llama_stack.providers.utils.remote import RemoteService
from llama_stack.providers.utils.remote.hugging_face import is_hugging_face_url
from llama_stack.providers.utils.remote.training_jobs import (
    RemotePostTraining,
    parse_timestamp,
    step_number,
    upload_name,
)
from llama_stack.providers.utils.remote.url_paths import segment
from llama_stack.providers.utils.training.jobs import TrainingJobRecord, TrainingJobStore, in_step_order, iso
from llama_stack.providers.utils.training.requests import TrainingRequest

from .config import EMISSARY_MAX_DATASET_BYTES, EmissaryPostTrainingConfig
from .service import emissary_service

log = logging.getLogger(__name__)

VENDOR = "Emissary"

STATUSES: dict[str, PostTrainingJobStatus] = {
    "Pending": PostTrainingJobStatus.scheduled,
    "Running": PostTrainingJobStatus.running,
    "Testing": PostTrainingJobStatus.running,
    "Success": PostTrainingJobStatus.completed,
    "Failed": PostTrainingJobStatus.failed,
    "TimedOut": PostTrainingJobStatus.failed,
    "Cancelled": PostTrainingJobStatus.failed,
}
LOG_LEVELS = {"Failed": "error", "TimedOut": "error", "Cancelled": "warning"}
RESOURCE_FIELDS = (
    "progress",
    "training_technique",
    "base_model",
    "base_fine_tuned_model",
    "base_fine_tuned_model_checkpoint",
)
LS_URL = re.compile(r"^(https?://|file://|data:)")
DATASET_LIMIT = (
    f"the 5 MiB ({EMISSARY_MAX_DATASET_BYTES} bytes) {VENDOR} accepts per dataset file; "
    "send a smaller dataset or a sample of it"
)


class EmissaryPostTraining(RemotePostTraining[EmissaryPostTrainingConfig]):
    vendor = VENDOR
    statuses = STATUSES
    resource_fields = RESOURCE_FIELDS
    started_at_field = None  # Emissary reports no start time.
    # The datasets API, where the distribution serves it: requests may name a dataset by its uuid.
    datasets: Any | None = None

    def __init__(
        self,
        config: EmissaryPostTrainingConfig,
        service: RemoteService,
        store: TrainingJobStore,
        reader: DatasetReader,
    ):
        super().__init__(config, service, store, reader)
        # project_name's project per API key (a request may bring its own key, and so its own account).
        self._projects: dict[str, str] = {}
        self._project_lock = asyncio.Lock()

    # ------------------------------------------------------------------------------------ training
    async def supervised_fine_tune(self, request: PostTrainingSFTRequest) -> PostTrainingJob:
        if request.algorithm not in (FinetuningAlgorithm.full, FinetuningAlgorithm.lora):
            raise NotSupportedError(
                f"{VENDOR} has no {request.algorithm.value.upper()} fine-tuning: use algorithm 'lora' or 'full' "
                f"(provider '{self._id}'), or a remote::together provider",
                provider=self._id,
                param="algorithm",
            )
        self._check_request(request)
        train, validation = await resolve_training_datasets(
            request.dataset, request.validation_dataset, self.datasets, provider=self._id
        )
        model = self.config.base_models.get(request.model, request.model)
        with self.store.creating(request.job_uuid):
            await self._check_base_model(model, "model")
            data = await self._read_datasets(train, validation)
            project = await self._project()
            datasets = await self._upload_datasets(project, request.job_uuid, data)
            body = {
                "base_model_option": "pre-trained",
                "base_model": model,
                **datasets,
                "name": request.job_uuid,
                "description": f"llama-stack SFT {request.job_uuid}",
                "task_type": "text-generation",
                "parameters": {
                    "learning_rate": request.optimizer_config.lr,
                    "num_train_epochs": request.training_config.n_epochs,
                    "per_device_train_batch_size": request.training_config.batch_size,
                    "per_device_eval_batch_size": request.training_config.batch_size,
                },
            }
            await self._create(request.job_uuid, "sft", project, "training-jobs", body)
        return PostTrainingJob(job_uuid=request.job_uuid)

    async def preference_optimize(self, request: PostTrainingRLHFRequest) -> PostTrainingJob:
        grpo = request.algorithm_config
        # The request's own check pairs algorithm 'grpo' with a GRPOAlignmentConfig; isinstance types it.
        if request.algorithm != RLHFAlgorithm.grpo or not isinstance(grpo, GRPOAlignmentConfig):
            raise NotSupportedError(
                f"{VENDOR} has no {request.algorithm.value.upper()} training: use algorithm 'grpo' with reward "
                f"functions (provider '{self._id}'), or a remote::together provider for DPO",
                provider=self._id,
                param="algorithm",
            )
        self._check_request(request)
        train, validation = await resolve_training_datasets(
            request.dataset, request.validation_dataset, self.datasets, provider=self._id
        )
        with self.store.creating(request.job_uuid):
            await self._check_reward_functions(grpo)
            project_hint, start = await self._grpo_start(request.finetuned_model)
            data = await self._read_datasets(train, validation)
            project = await self._project()
            if project_hint is not None and project_hint != project:
                raise BadRequestError(
                    f"finetuned_model names a training job of project {project_hint}, but provider "
                    f"'{self._id}' trains in project {project}: continued training stays in one project",
                    provider=self._id,
                    param="finetuned_model",
                )
            datasets = await self._upload_datasets(project, request.job_uuid, data)
            body = {
                **start,
                **datasets,
                "test_functions": list(grpo.reward_functions),
                "reward": dict(grpo.reward_functions),
                "name": request.job_uuid,
                "description": f"llama-stack GRPO {request.job_uuid}",
                "task_type": "text-generation",
                "parameters": {
                    "learning_rate": request.optimizer_config.lr,
                    "num_train_epochs": request.training_config.n_epochs,
                    "num_generations": grpo.num_generations,
                    "per_device_train_batch_size": request.training_config.batch_size,
                },
            }
            await self._create(request.job_uuid, "grpo", project, "training-jobs/grpo", body)
        return PostTrainingJob(job_uuid=request.job_uuid)

    # ------------------------------------------------------------------------------ request checks
    def _check_vendor_request(self, request: TrainingRequest) -> None:
        if request.logger_config:
            raise BadRequestError(
                f"{VENDOR} has no experiment-tracker integration; send an empty logger_config and follow the job "
                "with the status and logs routes",
                provider=self._id,
                param="logger_config",
            )

    async def _check_base_model(self, model: str, param: str) -> None:
        names = _listed_names(await self.service.json("GET", "/v1/models"))
        if names and model not in names:
            raise BadRequestError(
                f"{VENDOR} has no base model {model!r}; it trains {', '.join(names)}. Name one of them, or map the "
                f"request's model to one with base_models in provider '{self._id}''s config",
                provider=self._id,
                param=param,
                code="model_not_trainable",
            )

    async def _check_reward_functions(self, grpo: GRPOAlignmentConfig) -> None:
        available = _listed_names(await self.service.json("GET", "/v1/testing-functions"))
        unknown = [name for name in grpo.reward_functions if name not in available]
        if unknown:
            raise BadRequestError(
                f"{VENDOR} has no testing function {', '.join(repr(n) for n in unknown)} to reward with; it has: "
                f"{', '.join(available) or 'none'}",
                provider=self._id,
                param="algorithm_config.reward_functions",
            )

    async def _grpo_start(self, url: str) -> tuple[str | None, dict[str, Any]]:
        """(the project an earlier job is in, the base model fields) for a GRPO job's finetuned_model."""
        reference = self._job_reference(url)
        if reference is not None:
            project, job_id, checkpoint = reference
            fields: dict[str, Any] = {"base_model_option": "fine-tuned", "base_model": job_id}
            if checkpoint is not None:
                fields["checkpoint"] = checkpoint
            return project, fields
        if self.config.preference_model:
            await self._check_base_model(self.config.preference_model, "finetuned_model")
            fields = {"base_model_option": "pre-trained", "base_model": self.config.preference_model}
            if is_hugging_face_url(url):
                fields["hf_model_link"] = url
            return None, fields
        raise BadRequestError(
            f"finetuned_model {url!r} is not an {VENDOR} training job of this provider "
            f"({self.config.url.rstrip('/')}/v1/projects/<ms-id>/training-jobs/<tr-id or job_uuid>#checkpoint=<n>), "
            f"and provider '{self._id}' has no preference_model (the base model GRPO trains otherwise)",
            provider=self._id,
            param="finetuned_model",
        )

    def _job_reference(self, url: str) -> tuple[str, str, int | None] | None:
        """(project, training job id, checkpoint) when ``url`` names an Emissary training job."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.netloc != urllib.parse.urlsplit(self.config.url).netloc:
            return None
        match = re.search(r"/v1/projects/([^/]+)/training-jobs/([^/]+)", parts.path)
        if match is None:
            return None
        project, job_id = (urllib.parse.unquote(g) for g in match.groups())
        job_id = self.store.vendor_job_id(job_id)
        found = re.search(r"checkpoint=(\d+)", parts.fragment or parts.query)
        return project, job_id, int(found.group(1)) if found else None

    # -------------------------------------------------------------------------------- uploads, create
    async def _read_datasets(self, train: Dataset, validation: Dataset) -> tuple[bytes, bytes | None]:
        return await read_training_data(self._read, train.content_url, validation.content_url)

    async def _read(self, url: str, where: str) -> bytes:
        return await self.reader.read(url, where, max_bytes=EMISSARY_MAX_DATASET_BYTES, limit=DATASET_LIMIT)

    async def _upload_datasets(self, project: str, job_uuid: str, data: tuple[bytes, bytes | None]) -> dict[str, str]:
        train_data, validation_data = data
        train_id = await self._upload(project, job_uuid, "train", train_data)
        test_id = await self._upload(project, job_uuid, "validation", validation_data) if validation_data else train_id
        return {"train_dataset_id": train_id, "test_dataset_id": test_id}

    async def _upload(self, project: str, job_uuid: str, role: str, data: bytes) -> str:
        name = upload_name(job_uuid, role)
        return await self._upload_file(
            f"/v1/projects/{segment(project)}/datasets",
            f"{name}{file_extension(data)}",
            data,
            {"name": name},
            answered=f"the upload of dataset {name} without an id",
        )

    async def _create(self, job_uuid: str, kind: str, project: str, route: str, body: dict[str, Any]) -> None:
        await self._start_job(
            job_uuid,
            kind,
            f"/v1/projects/{segment(project)}/{route}",
            body,
            answered=f"POST {route} without a job id",
            details={"project_id": project, "base_model": body["base_model"]},
        )

    async def _project(self) -> str:
        if self.config.project_id:
            return self.config.project_id
        key = hashlib.sha256(self.service.api_key()[0].encode()).hexdigest()
        async with self._project_lock:
            if key not in self._projects:
                self._projects[key] = await self._find_or_create_project(self.config.project_name)
            return self._projects[key]

    async def _find_or_create_project(self, name: str) -> str:
        listed = await self.service.json("GET", "/v1/projects") or []
        for project in listed:
            if isinstance(project, dict) and project.get("name") == name and isinstance(project.get("id"), str):
                return project["id"]
        created = await self.service.json("POST", "/v1/projects", json_body={"name": name}, idempotent=False)
        project_id = self._vendor_id(created, answered="POST /v1/projects without a project id")
        log.info("%s: created Emissary project %s (%s)", self._id, name, project_id)
        return project_id

    # ---------------------------------------------------------------------------------- job hooks
    def _job_path(self, record: TrainingJobRecord) -> str:
        return f"/v1/projects/{segment(record.details['project_id'])}/training-jobs/{segment(record.vendor_job_id)}"

    def _job_location(self, record: TrainingJobRecord) -> str:
        return f" in project {record.details.get('project_id')}"

    async def _log_lines(self, record: TrainingJobRecord) -> list[str]:
        return _log_lines(await self._job(record))

    async def _checkpoints(self, record: TrainingJobRecord) -> list[Checkpoint]:
        listed = await self._vendor(record, "GET", f"{self._job_path(record)}/checkpoints") or []
        return in_step_order(
            Checkpoint(iters=number, path=self._checkpoint_url(record, number, item.get("model_download_url")))
            for item in listed
            if isinstance(item, dict) and (number := step_number(item.get("checkpoint"))) is not None
        )

    def _checkpoint_url(self, record: TrainingJobRecord, number: int, download_url: Any) -> str:
        if isinstance(download_url, str) and LS_URL.match(download_url):
            return download_url
        # An s3:// path (or none) is no URL a client can fetch: name the checkpoint on Emissary's API instead,
        # the form finetuned_model takes to continue from it.
        return f"{self.config.url.rstrip('/')}{self._job_path(record)}/checkpoints#checkpoint={number}"

    async def _listed_jobs(self, records: list[TrainingJobRecord]) -> dict[str, dict[str, Any]]:
        # One listing per project the jobs are in (a changed project_name leaves older jobs in another).
        listed: dict[str, dict[str, Any]] = {}
        for project in dict.fromkeys(record.details["project_id"] for record in records):
            for job in await self.service.json("GET", f"/v1/projects/{segment(project)}/training-jobs") or []:
                if isinstance(job, dict) and job.get("id"):
                    listed[job["id"]] = job
        return listed

    async def _cancel(self, record: TrainingJobRecord) -> dict[str, Any] | None:
        # Emissary's answer is not the job: it is read again, with its checkpoints.
        await self._vendor(record, "POST", f"{self._job_path(record)}/cancel")
        return None

    def _resources(self, record: TrainingJobRecord, job: dict[str, Any]) -> dict[str, Any]:
        resources = {"project_id": record.details.get("project_id"), **super()._resources(record, job)}
        losses = [point for point in _loss_points(job) if "loss" in point]
        if losses:
            resources["training_loss"] = losses[-1]["loss"]
        return resources


def _listed_names(listed: Any) -> list[str]:
    """The names in a vendor listing (a JSON array of objects with a ``name``); other entries are skipped."""
    names: list[str] = []
    for entry in listed if isinstance(listed, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str):
            names.append(name)
    return names


def _loss_points(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's training loss points as Emissary lists them (entries that are not objects are skipped)."""
    points = job.get("training_loss")
    return [point for point in points if isinstance(point, dict)] if isinstance(points, list) else []


def _log_lines(job: dict[str, Any]) -> list[str]:
    """Emissary has no logs: the job's creation, each training loss point, and where it is now."""
    technique = job.get("training_technique", "training")
    lines = [
        f"{iso(parse_timestamp(job.get('created_at')))} [info] job_created: {technique} job {job.get('id')} "
        f"({job.get('name')}) on {job.get('base_fine_tuned_model') or job.get('base_model')}"
    ]
    points = _loss_points(job)
    for index, point in enumerate(points, 1):
        lines.append(
            f"{iso(parse_timestamp(point.get('timestamp')))} [info] training_loss point={index}/{len(points)}: loss={point.get('loss')}"
        )
    status = job.get("status")
    level = LOG_LEVELS.get(status, "info") if isinstance(status, str) else "info"
    lines.append(
        f"{iso(parse_timestamp(job.get('updated_at')))} [{level}] status: {status}, progress {job.get('progress', 0)}%"
    )
    return lines


async def build(config: EmissaryPostTrainingConfig, context: ProviderContext) -> EmissaryPostTraining:
    adapter = EmissaryPostTraining.for_context(config, emissary_service(config, context), context)
    adapter.datasets = context.deps.get(Api.datasets)
    return adapter
