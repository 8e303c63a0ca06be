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
from collections import defaultdict
from typing import Any

from llama_stack.apis.datasets import Dataset
from llama_stack.apis.errors import BadRequestError, NotFoundError, NotSupportedError, ProviderError
from llama_stack.apis.post_training import (
    CancelTrainingJobRequest,
    Checkpoint,
    FinetuningAlgorithm,
    GRPOAlignmentConfig,
    OptimizerConfig,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobInfo,
    PostTrainingJobLogStream,
    PostTrainingJobStatus,
    PostTrainingJobStatusResponse,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
    RLHFAlgorithm,
    TrainingConfig,
)
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.datasets import DatasetReader, file_extension
from llama_stack.providers.utils.remote.training_jobs import (
    TrainingJobRecord,
    TrainingJobStore,
    iso,
    parse_timestamp,
    refuse_unsupported_common,
)

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
TERMINAL = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})
LOG_LEVELS = {"Failed": "error", "TimedOut": "error", "Cancelled": "warning"}
RESOURCE_FIELDS = ("progress", "training_technique", "base_model", "base_fine_tuned_model", "base_fine_tuned_model_checkpoint")
LS_URL = re.compile(r"^(https?://|file://|data:)")
HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
DATASET_LIMIT = (
    f"the 5 MiB ({EMISSARY_MAX_DATASET_BYTES} bytes) {VENDOR} accepts per dataset file; "
    "send a smaller dataset or a sample of it"
)


class EmissaryPostTraining:
    def __init__(
        self,
        config: EmissaryPostTrainingConfig,
        service: RemoteService,
        store: TrainingJobStore,
        reader: DatasetReader,
    ):
        self.config = config
        self.svc = service
        self.store = store
        self.reader = reader
        self.provider_id = service.provider_id
        # project_name's project per API key (a request may bring its own key, and so its own account).
        self._projects: dict[str, str] = {}
        self._project_lock = asyncio.Lock()

    # ------------------------------------------------------------------------------------ training
    async def supervised_fine_tune(self, request: PostTrainingSFTRequest) -> PostTrainingJob:
        if request.algorithm not in (FinetuningAlgorithm.full, FinetuningAlgorithm.lora):
            raise NotSupportedError(
                f"{VENDOR} has no {request.algorithm.value.upper()} fine-tuning: use algorithm 'lora' or 'full' "
                f"(provider '{self.provider_id}'), or a remote::together provider",
                provider=self.provider_id,
                param="algorithm",
            )
        self._check_request(request.optimizer_config, request.training_config, request.hyperparam_search_config, request.logger_config)
        model = self.config.base_models.get(request.model, request.model)
        with self.store.creating(request.job_uuid):
            await self._check_base_model(model, "model")
            data = await self._read_datasets(request.dataset, request.validation_dataset)
            project = await self._project()
            datasets = await self._upload_datasets(project, request.job_uuid, request.dataset, request.validation_dataset, data)
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
        if request.algorithm != RLHFAlgorithm.grpo:
            raise NotSupportedError(
                f"{VENDOR} has no {request.algorithm.value.upper()} training: use algorithm 'grpo' with reward "
                f"functions (provider '{self.provider_id}'), or a remote::together provider for DPO",
                provider=self.provider_id,
                param="algorithm",
            )
        grpo: GRPOAlignmentConfig = request.algorithm_config  # type: ignore[assignment]
        self._check_request(request.optimizer_config, request.training_config, request.hyperparam_search_config, request.logger_config)
        with self.store.creating(request.job_uuid):
            await self._check_reward_functions(grpo)
            project_hint, start = await self._grpo_start(request.finetuned_model)
            data = await self._read_datasets(request.dataset, request.validation_dataset)
            project = await self._project()
            if project_hint is not None and project_hint != project:
                raise BadRequestError(
                    f"finetuned_model names a training job of project {project_hint}, but provider "
                    f"'{self.provider_id}' trains in project {project}: continued training stays in one project",
                    provider=self.provider_id,
                    param="finetuned_model",
                )
            datasets = await self._upload_datasets(project, request.job_uuid, request.dataset, request.validation_dataset, data)
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

    # ---------------------------------------------------------------------------------------- jobs
    async def get_training_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        record = self.store.get(job_uuid)
        job, checkpoints = await asyncio.gather(self._job(record), self._checkpoints(record))
        return self._status(record, job, checkpoints)

    async def get_training_job_logs(self, job_uuid: str) -> PostTrainingJobLogStream:
        record = self.store.get(job_uuid)
        return PostTrainingJobLogStream(job_uuid=job_uuid, log_lines=_log_lines(await self._job(record)))

    async def get_training_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        record = self.store.get(job_uuid)
        return PostTrainingJobArtifactsResponse(job_uuid=job_uuid, checkpoints=await self._checkpoints(record))

    async def list_training_jobs(self) -> list[PostTrainingJobInfo]:
        records = self.store.all()
        by_project: dict[str, list[TrainingJobRecord]] = defaultdict(list)
        for record in records:
            by_project[record.details["project_id"]].append(record)
        listed: dict[str, dict[str, Any]] = {}
        for project in by_project:
            for job in await self.svc.json("GET", f"/v1/projects/{_quote(project)}/training-jobs") or []:
                if isinstance(job, dict) and job.get("id"):
                    listed[job["id"]] = job
        infos = []
        for record in records:
            job = listed.get(record.vendor_job_id)
            if job is None:
                try:
                    job = await self._job(record)
                except NotFoundError:
                    log.warning("%s: job %s (%s) is gone from Emissary; not listed", self.provider_id, record.job_uuid, record.vendor_job_id)
                    continue
            infos.append(PostTrainingJobInfo(job_uuid=record.job_uuid, status=self._map_status(record, job)))
        return infos

    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> PostTrainingJobStatusResponse:
        record = self.store.get(request.job_uuid)
        await self._vendor(record, "POST", f"{_job_path(record)}/cancel", idempotent=True)
        return await self.get_training_job_status(request.job_uuid)

    async def shutdown(self) -> None:
        await self.svc.aclose()
        self.store.close()

    # ------------------------------------------------------------------------------ request checks
    def _check_request(
        self, optimizer: OptimizerConfig, training: TrainingConfig, search: dict[str, Any], logger_config: dict[str, Any]
    ) -> None:
        refuse_unsupported_common(
            vendor=VENDOR, provider=self.provider_id, optimizer_config=optimizer, hyperparam_search_config=search
        )
        if logger_config:
            raise BadRequestError(
                f"{VENDOR} has no experiment-tracker integration; send an empty logger_config and follow the job "
                "with the status and logs routes",
                provider=self.provider_id,
                param="logger_config",
            )
        if training.n_epochs < 1 or training.batch_size < 1:
            raise BadRequestError(
                "training_config.n_epochs and batch_size must be at least 1", provider=self.provider_id, param="training_config"
            )

    async def _check_base_model(self, model: str, param: str) -> None:
        listed = await self.svc.json("GET", "/v1/models") or []
        names = [m.get("name") for m in listed if isinstance(m, dict) and isinstance(m.get("name"), str)]
        if names and model not in names:
            raise BadRequestError(
                f"{VENDOR} has no base model {model!r}; it trains {', '.join(names)}. Name one of them, or map the "
                f"request's model to one with base_models in provider '{self.provider_id}''s config",
                provider=self.provider_id,
                param=param,
                code="model_not_trainable",
            )

    async def _check_reward_functions(self, grpo: GRPOAlignmentConfig) -> None:
        listed = await self.svc.json("GET", "/v1/testing-functions") or []
        available = [f.get("name") for f in listed if isinstance(f, dict) and isinstance(f.get("name"), str)]
        unknown = [name for name in grpo.reward_functions if name not in available]
        if unknown:
            raise BadRequestError(
                f"{VENDOR} has no testing function {', '.join(repr(n) for n in unknown)} to reward with; it has: "
                f"{', '.join(available) or 'none'}",
                provider=self.provider_id,
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
            if urllib.parse.urlsplit(url).netloc.lower() in HF_HOSTS:
                fields["hf_model_link"] = url
            return None, fields
        raise BadRequestError(
            f"finetuned_model {url!r} is not an {VENDOR} training job of this provider "
            f"({self.config.url.rstrip('/')}/v1/projects/<ms-id>/training-jobs/<tr-id or job_uuid>#checkpoint=<n>), "
            f"and provider '{self.provider_id}' has no preference_model (the base model GRPO trains otherwise)",
            provider=self.provider_id,
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
        known = self.store.find_vendor_job(job_id)
        if known is None:
            try:
                job_id = self.store.get(job_id).vendor_job_id  # a job_uuid of this provider
            except NotFoundError:
                pass
        found = re.search(r"checkpoint=(\d+)", parts.fragment or parts.query)
        return project, job_id, int(found.group(1)) if found else None

    # -------------------------------------------------------------------------------- uploads, create
    async def _read_datasets(self, train: Dataset, validation: Dataset) -> tuple[bytes, bytes | None]:
        # Both are read (and size-checked) before either is uploaded.
        train_data = await self.reader.read(
            train.content_url, "dataset.content_url", max_bytes=EMISSARY_MAX_DATASET_BYTES, limit=DATASET_LIMIT
        )
        if validation.content_url == train.content_url:
            return train_data, None
        validation_data = await self.reader.read(
            validation.content_url, "validation_dataset.content_url", max_bytes=EMISSARY_MAX_DATASET_BYTES, limit=DATASET_LIMIT
        )
        return train_data, validation_data

    async def _upload_datasets(
        self, project: str, job_uuid: str, train: Dataset, validation: Dataset, data: tuple[bytes, bytes | None]
    ) -> dict[str, str]:
        train_data, validation_data = data
        train_id = await self._upload(project, job_uuid, "train", train_data)
        test_id = await self._upload(project, job_uuid, "validation", validation_data) if validation_data else train_id
        return {"train_dataset_id": train_id, "test_dataset_id": test_id}

    async def _upload(self, project: str, job_uuid: str, role: str, data: bytes) -> str:
        name = f"{_safe_name(job_uuid)}-{role}"
        answer = await self.svc.json(
            "POST",
            f"/v1/projects/{_quote(project)}/datasets",
            files={"file": (f"{name}{file_extension(data)}", data, "application/octet-stream")},
            data={"name": name},
        )
        dataset_id = (answer or {}).get("id")
        if not isinstance(dataset_id, str):
            raise ProviderError(f"{self.svc.name} answered the upload of dataset {name} without an id", provider=self.provider_id)
        return dataset_id

    async def _create(self, job_uuid: str, kind: str, project: str, route: str, body: dict[str, Any]) -> None:
        # Not retried after a dropped connection: the job may have been created, and a retry would start a second.
        job = await self.svc.json("POST", f"/v1/projects/{_quote(project)}/{route}", json_body=body, idempotent=False)
        vendor_id = (job or {}).get("id")
        if not isinstance(vendor_id, str):
            raise ProviderError(f"{self.svc.name} answered POST {route} without a job id", provider=self.provider_id)
        created = parse_timestamp(job.get("created_at"))
        self.store.add(
            TrainingJobRecord(
                job_uuid,
                vendor_id,
                kind,
                **({"created_at": created} if created else {}),
                details={"project_id": project, "base_model": body["base_model"]},
            )
        )
        log.info("%s: started %s job %s as Emissary job %s in %s", self.provider_id, kind, job_uuid, vendor_id, project)

    async def _project(self) -> str:
        if self.config.project_id:
            return self.config.project_id
        key = hashlib.sha256(self.svc.api_key()[0].encode()).hexdigest()
        async with self._project_lock:
            if key not in self._projects:
                self._projects[key] = await self._find_or_create_project(self.config.project_name)
            return self._projects[key]

    async def _find_or_create_project(self, name: str) -> str:
        listed = await self.svc.json("GET", "/v1/projects") or []
        for project in listed:
            if isinstance(project, dict) and project.get("name") == name and isinstance(project.get("id"), str):
                return project["id"]
        created = await self.svc.json("POST", "/v1/projects", json_body={"name": name}, idempotent=False)
        project_id = (created or {}).get("id")
        if not isinstance(project_id, str):
            raise ProviderError(f"{self.svc.name} answered POST /v1/projects without a project id", provider=self.provider_id)
        log.info("%s: created Emissary project %s (%s)", self.provider_id, name, project_id)
        return project_id

    # ---------------------------------------------------------------------------------- vendor reads
    async def _vendor(self, record: TrainingJobRecord, method: str, path: str, **options: Any) -> Any:
        try:
            return await self.svc.json(method, path, **options)
        except VendorStatusError as exc:
            if exc.vendor_status == 404:
                raise NotFoundError(
                    f"post-training job {record.job_uuid!r} is {VENDOR} job {record.vendor_job_id} in project "
                    f"{record.details.get('project_id')}, which {VENDOR} no longer knows ({exc.vendor_message}); "
                    "it may have been deleted there",
                    provider=self.provider_id,
                    code="vendor_job_not_found",
                ) from None
            raise

    async def _job(self, record: TrainingJobRecord) -> dict[str, Any]:
        return await self._vendor(record, "GET", _job_path(record)) or {}

    async def _checkpoints(self, record: TrainingJobRecord) -> list[Checkpoint]:
        listed = await self._vendor(record, "GET", f"{_job_path(record)}/checkpoints") or []
        checkpoints: dict[int, Checkpoint] = {}
        for item in listed:
            number = item.get("checkpoint") if isinstance(item, dict) else None
            if isinstance(number, int) and not isinstance(number, bool):
                checkpoints[number] = Checkpoint(iters=number, path=self._checkpoint_url(record, number, item.get("model_download_url")))
        return [checkpoints[n] for n in sorted(checkpoints)]

    def _checkpoint_url(self, record: TrainingJobRecord, number: int, download_url: Any) -> str:
        if isinstance(download_url, str) and LS_URL.match(download_url):
            return download_url
        # An s3:// path (or none) is no URL a client can fetch: name the checkpoint on Emissary's API instead,
        # the form finetuned_model takes to continue from it.
        return f"{self.config.url.rstrip('/')}{_job_path(record)}/checkpoints#checkpoint={number}"

    def _map_status(self, record: TrainingJobRecord, job: dict[str, Any]) -> PostTrainingJobStatus:
        status = job.get("status")
        if status not in STATUSES:
            raise ProviderError(
                f"{self.svc.name} reported status {status!r} for job {record.job_uuid} ({record.vendor_job_id}), "
                "which this provider does not know",
                provider=self.provider_id,
            )
        return STATUSES[status]

    def _status(self, record: TrainingJobRecord, job: dict[str, Any], checkpoints: list[Checkpoint]) -> PostTrainingJobStatusResponse:
        status = self._map_status(record, job)
        resources: dict[str, Any] = {
            "vendor_job_id": record.vendor_job_id,
            "vendor_status": job.get("status"),
            "project_id": record.details.get("project_id"),
        }
        resources.update({key: job[key] for key in RESOURCE_FIELDS if job.get(key) is not None})
        losses = [point for point in job.get("training_loss") or [] if isinstance(point, dict) and "loss" in point]
        if losses:
            resources["training_loss"] = losses[-1]["loss"]
        return PostTrainingJobStatusResponse(
            job_uuid=record.job_uuid,
            status=status,
            scheduled_at=parse_timestamp(job.get("created_at")) or record.created_at,
            # Emissary reports no start time.
            started_at=None,
            completed_at=parse_timestamp(job.get("updated_at")) if job.get("status") in TERMINAL else None,
            resources_allocated=resources,
            checkpoints=checkpoints,
        )


def _log_lines(job: dict[str, Any]) -> list[str]:
    """Emissary has no logs: the job's creation, each training loss point, and where it is now."""
    technique = job.get("training_technique", "training")
    lines = [
        f"{iso(parse_timestamp(job.get('created_at')))} [info] job_created: {technique} job {job.get('id')} "
        f"({job.get('name')}) on {job.get('base_fine_tuned_model') or job.get('base_model')}"
    ]
    points = [p for p in job.get("training_loss") or [] if isinstance(p, dict)]
    for index, point in enumerate(points, 1):
        lines.append(f"{iso(parse_timestamp(point.get('timestamp')))} [info] training_loss point={index}/{len(points)}: loss={point.get('loss')}")
    status = job.get("status")
    lines.append(
        f"{iso(parse_timestamp(job.get('updated_at')))} [{LOG_LEVELS.get(status, 'info')}] status: {status}, "
        f"progress {job.get('progress', 0)}%"
    )
    return lines


def _job_path(record: TrainingJobRecord) -> str:
    return f"/v1/projects/{_quote(record.details['project_id'])}/training-jobs/{_quote(record.vendor_job_id)}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100] or "job"


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


async def build(config: EmissaryPostTrainingConfig, context: ProviderContext) -> EmissaryPostTraining:
    return EmissaryPostTraining(
        config,
        emissary_service(config, context),
        TrainingJobStore(context.storage_dir, context.provider_id),
        DatasetReader(config.datasets, provider=context.provider_id),
    )
