"""What remote post-training providers share beyond what every trainer does (``providers/utils/training/``:
the job store, the request checks; ``providers/utils/datasets.py``: reading datasets): the job half of the
API (status, logs, artifacts, list, cancel) answered by polling the vendor, as one base class, and reading
the vendor's answers.

The vendors know their jobs by their own ids (Together ``ft-...``, Emissary ``tr-...``); clients know them
by the ``job_uuid`` they chose. The job store keeps that mapping, so a restarted stack still answers for
the jobs it started earlier.

:class:`RemotePostTraining` answers for those jobs the same way for every vendor (one 404 for a job the
vendor lost, one status mapping, one listing with a per-job fallback); an adapter says through small hooks
how its vendor's API shows a job, and keeps to itself only what is really its vendor's: how a request maps
to a vendor job, the vendor's limits, and where a preference job starts from.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, TypeVar

from llama_stack.apis.errors import BadRequestError, NotFoundError, ProviderError
from llama_stack.apis.post_training import (
    CancelTrainingJobRequest,
    Checkpoint,
    OptimizerConfig,
    OptimizerType,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobInfo,
    PostTrainingJobLogStream,
    PostTrainingJobStatus,
    PostTrainingJobStatusResponse,
)
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.datasets import DatasetReader, DatasetSourceConfig
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.remote.config import RemoteServiceConfig
from llama_stack.providers.utils.remote.service import RemoteService, VendorStatusError
from llama_stack.providers.utils.training.jobs import TrainingJobRecord, TrainingJobStore
from llama_stack.providers.utils.training.requests import (
    TrainingRequest,
    check_learning_rate,
    check_training_loop,
    refuse_hyperparam_search,
)


# ------------------------------------------------------------------------------------- request checks
def refuse_all_but_adamw(optimizer_config: OptimizerConfig, *, vendor: str, provider: str) -> None:
    """Refuse (400) an optimizer the vendors do not train with, before anything is uploaded or created."""
    # The vendors train with AdamW; Adam is the same optimizer when there is no weight decay.
    optimizer = optimizer_config.optimizer_type
    if optimizer == OptimizerType.sgd or (optimizer == OptimizerType.adam and optimizer_config.weight_decay):
        raise BadRequestError(
            f"{vendor} trains with AdamW only; optimizer_type {optimizer.value!r}"
            + (" with weight_decay" if optimizer == OptimizerType.adam else "")
            + " cannot be honoured: send optimizer_type 'adamw'",
            provider=provider,
            param="optimizer_config.optimizer_type",
        )


# -------------------------------------------------------------------------------------- vendor answers
def parse_timestamp(value: Any) -> datetime | None:
    """A vendor's ISO 8601 string or UNIX seconds as an aware datetime; None when absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def step_number(value: Any) -> int | None:
    """A vendor's checkpoint step (or number) when it is a whole number; JSON's true is not step 1."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------- uploads
def upload_name(job_uuid: str, role: str) -> str:
    """What the ``role`` ("train", "validation") dataset of ``job_uuid`` is called at the vendor.

    job_uuid is the client's free text: characters file names at the vendors may not hold become ``_``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", job_uuid)[:100] or "job"
    return f"{safe}-{role}"


# ------------------------------------------------------------------------------------- the job routes
class _TrainingConfig(Protocol):
    """What :meth:`RemotePostTraining.for_context` needs of an adapter's config."""

    datasets: DatasetSourceConfig


ConfigT = TypeVar("ConfigT", bound=RemoteServiceConfig)
AdapterT = TypeVar("AdapterT", bound="RemotePostTraining[Any]")

# Our statuses a job does not leave: the vendor's update time is then when it ended.
_ENDED = frozenset({PostTrainingJobStatus.completed, PostTrainingJobStatus.failed})


class RemotePostTraining(RemoteAdapter[ConfigT], abc.ABC):
    """A post-training provider whose jobs run at a vendor: the job routes, and what starting a job needs.

    An adapter sets the class attributes below, implements the hooks (how its vendor's API shows a job:
    where it is, its checkpoints, its log lines, listing and cancelling), and the training routes itself,
    with :meth:`_check_request`, :meth:`_upload_file` and :meth:`_start_job` doing the parts every vendor
    shares.
    """

    vendor: ClassVar[str]  # how errors and logs name the vendor: "Together"
    statuses: ClassVar[Mapping[str, PostTrainingJobStatus]]  # the vendor's job statuses -> ours (others: 502)
    resource_fields: ClassVar[tuple[str, ...]]  # the job's fields shown in resources_allocated when present
    started_at_field: ClassVar[str | None] = "started_at"  # None: the vendor reports no start time

    def __init__(self, config: ConfigT, service: RemoteService, store: TrainingJobStore, reader: DatasetReader):
        super().__init__(config, service)
        self.store = store
        self.reader = reader
        # The adapter's module logger, so that log lines name the provider type they come from.
        self.log = logging.getLogger(type(self).__module__)

    @classmethod
    def for_context(
        cls: type[AdapterT], config: _TrainingConfig, service: RemoteService, context: ProviderContext
    ) -> AdapterT:
        """The adapter for a provider: its jobs kept in the provider's storage folder, datasets read as its
        config's ``datasets`` block allows."""
        return cls(
            config,
            service,
            TrainingJobStore(context.storage_dir, context.provider_id),
            DatasetReader(config.datasets, provider=context.provider_id),
        )

    # ----------------------------------------------------------------------------------- job routes
    async def get_training_job_status(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        return await self._read_status(self.store.get(job_uuid))

    async def get_training_job_logs(self, job_uuid: str) -> PostTrainingJobLogStream:
        record = self.store.get(job_uuid)
        return PostTrainingJobLogStream(job_uuid=job_uuid, log_lines=await self._log_lines(record))

    async def get_training_job_artifacts(self, job_uuid: str) -> PostTrainingJobArtifactsResponse:
        record = self.store.get(job_uuid)
        return PostTrainingJobArtifactsResponse(job_uuid=job_uuid, checkpoints=await self._checkpoints(record))

    async def list_training_jobs(self) -> list[PostTrainingJobInfo]:
        records = self.store.all()
        if not records:
            return []
        listed = await self._listed_jobs(records)
        infos = []
        for record in records:
            job = listed.get(record.vendor_job_id)
            if job is None:
                # Not in the listing (paged out, or gone): ask for the job itself.
                try:
                    job = await self._job(record)
                except NotFoundError:
                    self.log.warning(
                        "%s: job %s (%s) is gone from %s; not listed",
                        self._id,
                        record.job_uuid,
                        record.vendor_job_id,
                        self.vendor,
                    )
                    continue
            infos.append(PostTrainingJobInfo(job_uuid=record.job_uuid, status=self._map_status(record, job)))
        return infos

    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> PostTrainingJobStatusResponse:
        record = self.store.get(request.job_uuid)
        job = await self._cancel(record)
        if job is None:
            return await self._read_status(record)
        return self._status(record, job, await self._checkpoints(record))

    async def shutdown(self) -> None:
        await super().shutdown()
        self.store.close()

    # -------------------------------------------------------------------------------- vendor hooks
    @abc.abstractmethod
    def _job_path(self, record: TrainingJobRecord) -> str:
        """The vendor's route of the job (``GET`` answers it)."""

    @abc.abstractmethod
    async def _checkpoints(self, record: TrainingJobRecord) -> list[Checkpoint]:
        """The job's checkpoints, in step order, each with a path a client can use."""

    @abc.abstractmethod
    async def _log_lines(self, record: TrainingJobRecord) -> list[str]:
        """The job's log, one line per event."""

    @abc.abstractmethod
    async def _listed_jobs(self, records: list[TrainingJobRecord]) -> dict[str, dict[str, Any]]:
        """vendor job id -> job, for as many of ``records`` as the vendor's listing answers in one go."""

    @abc.abstractmethod
    async def _cancel(self, record: TrainingJobRecord) -> dict[str, Any] | None:
        """Ask the vendor to cancel the job; the job as the vendor answers it, or None to read it again."""

    def _job_location(self, record: TrainingJobRecord) -> str:
        """Where the job is at the vendor beyond its id, for messages: `` in project ms-1``; empty when its id says all."""
        return ""

    def _resources(self, record: TrainingJobRecord, job: dict[str, Any]) -> dict[str, Any]:
        """resources_allocated after the vendor's job id and status: the resource fields the job has."""
        return {key: job[key] for key in self.resource_fields if job.get(key) is not None}

    def _check_vendor_request(self, request: TrainingRequest) -> None:
        """Refuse (400) what only this vendor cannot do with the request's options; nothing by default."""

    # ------------------------------------------------------------------------- starting a job
    def _check_request(self, request: TrainingRequest) -> None:
        """400 for options the vendor cannot honour, before anything is read, uploaded or created."""
        refuse_hyperparam_search(request.hyperparam_search_config, trainer=self.vendor, provider=self._id)
        refuse_all_but_adamw(request.optimizer_config, vendor=self.vendor, provider=self._id)
        check_learning_rate(request.optimizer_config, provider=self._id)
        self._check_vendor_request(request)
        check_training_loop(request.training_config, provider=self._id)

    def _vendor_id(self, answer: Any, *, answered: str) -> str:
        """The ``id`` in the vendor's ``answer``; a 502 when it has none, ``answered`` finishing the sentence
        "<vendor> answered ..." that says so."""
        value = (answer or {}).get("id")
        if not isinstance(value, str):
            raise ProviderError(f"{self.service.name} answered {answered}", provider=self._id)
        return value

    async def _upload_file(self, path: str, filename: str, data: bytes, form: dict[str, str], *, answered: str) -> str:
        """Upload ``data`` as ``filename`` with the ``form`` fields the vendor wants; the vendor's id for it."""
        answer = await self.service.json(
            "POST", path, files={"file": (filename, data, "application/octet-stream")}, data=form
        )
        return self._vendor_id(answer, answered=answered)

    async def _start_job(
        self,
        job_uuid: str,
        kind: str,
        path: str,
        body: dict[str, Any],
        *,
        answered: str,
        details: dict[str, Any],
        answer_details: tuple[str, ...] = (),
    ) -> TrainingJobRecord:
        """Create the vendor's job and remember it as ``job_uuid``.

        ``details`` are stored with the job (what is needed to reach it again), and so are the
        ``answer_details`` fields of the vendor's answer.
        """
        # Not retried after a dropped connection: the job may have been created, and a retry would start a second.
        job = await self.service.json("POST", path, json_body=body, idempotent=False)
        vendor_id = self._vendor_id(job, answered=answered)
        created = parse_timestamp(job.get("created_at"))
        record = TrainingJobRecord(
            job_uuid,
            vendor_id,
            kind,
            **({"created_at": created} if created else {}),
            details={**details, **{key: job.get(key) for key in answer_details}},
        )
        self.store.add(record)
        self.log.info(
            "%s: started %s job %s as %s job %s%s",
            self._id,
            kind,
            job_uuid,
            self.vendor,
            vendor_id,
            self._job_location(record),
        )
        return record

    # ------------------------------------------------------------------------------ reading jobs
    async def _vendor(self, record: TrainingJobRecord, method: str, path: str) -> Any:
        """``service.json`` for a route of the job's: the vendor's 404 is the job's own, naming where it was."""
        try:
            return await self.service.json(method, path)
        except VendorStatusError as exc:
            if exc.vendor_status == 404:
                raise NotFoundError(
                    f"post-training job {record.job_uuid!r} is {self.vendor} job {record.vendor_job_id}"
                    f"{self._job_location(record)}, which {self.vendor} no longer knows ({exc.vendor_message}); "
                    "it may have been deleted there",
                    provider=self._id,
                    code="vendor_job_not_found",
                ) from None
            raise

    async def _job(self, record: TrainingJobRecord) -> dict[str, Any]:
        return await self._vendor(record, "GET", self._job_path(record)) or {}

    async def _read_status(self, record: TrainingJobRecord) -> PostTrainingJobStatusResponse:
        job, checkpoints = await asyncio.gather(self._job(record), self._checkpoints(record))
        return self._status(record, job, checkpoints)

    def _map_status(self, record: TrainingJobRecord, job: dict[str, Any]) -> PostTrainingJobStatus:
        status = job.get("status")
        # A status that is not a string (null, a list, an object) is as unknown as a new status name.
        if not isinstance(status, str) or status not in self.statuses:
            raise ProviderError(
                f"{self.service.name} reported status {status!r} for job {record.job_uuid} ({record.vendor_job_id}), "
                "which this provider does not know",
                provider=self._id,
            )
        return self.statuses[status]

    def _status(
        self, record: TrainingJobRecord, job: dict[str, Any], checkpoints: list[Checkpoint]
    ) -> PostTrainingJobStatusResponse:
        status = self._map_status(record, job)
        started_at = parse_timestamp(job.get(self.started_at_field)) if self.started_at_field else None
        return PostTrainingJobStatusResponse(
            job_uuid=record.job_uuid,
            status=status,
            scheduled_at=parse_timestamp(job.get("created_at")) or record.created_at,
            started_at=started_at,
            completed_at=parse_timestamp(job.get("updated_at")) if status in _ENDED else None,
            resources_allocated={
                "vendor_job_id": record.vendor_job_id,
                "vendor_status": job.get("status"),
                **self._resources(record, job),
            },
            checkpoints=checkpoints,
        )
