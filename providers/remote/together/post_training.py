"""remote::together post-training: supervised fine-tuning (full, LoRA) and DPO as Together fine-tuning jobs.

A request is checked in full before anything is created: what Together cannot do is refused (QLoRA/DoRA
and GRPO with 501, an SGD optimizer or a hyperparameter search with 400), then the model's limits
(``GET /fine-tunes/models/limits``) are checked against the LoRA rank, batch size, learning rate and
epochs, each problem named. Only then are the datasets read, uploaded (``POST /files/upload``) and the
job created (``POST /fine-tunes``, never retried after a dropped connection, so that a job is not
started twice). The job_uuid -> Together job mapping is kept on disk, so status, logs, artifacts and
cancel keep working across restarts. See docs/providers/together-post-training.md.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from llama_stack.apis.datasets import Dataset
from llama_stack.apis.errors import BadRequestError, NotSupportedError, ProviderError
from llama_stack.apis.post_training import (
    Checkpoint,
    FinetuningAlgorithm,
    OptimizerConfig,
    PostTrainingJob,
    PostTrainingJobStatus,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
    RLHFAlgorithm,
    TrainingConfig,
)
from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.datasets import (
    check_jsonl,
    file_extension,
    read_training_data,
    resolve_training_datasets,
)
from llama_stack.providers.utils.remote import VendorStatusError
from llama_stack.providers.utils.remote.hugging_face import hugging_face_repo
from llama_stack.providers.utils.remote.training_jobs import RemotePostTraining, step_number, upload_name
from llama_stack.providers.utils.remote.url_paths import segment
from llama_stack.providers.utils.training.jobs import TrainingJobRecord, in_step_order
from llama_stack.providers.utils.training.requests import TrainingRequest

from .config import TogetherPostTrainingConfig
from .service import together_service

log = logging.getLogger(__name__)

VENDOR = "Together"

STATUSES: dict[str, PostTrainingJobStatus] = {
    "pending": PostTrainingJobStatus.scheduled,
    "queued": PostTrainingJobStatus.scheduled,
    "running": PostTrainingJobStatus.running,
    "compressing": PostTrainingJobStatus.running,
    "uploading": PostTrainingJobStatus.running,
    "cancel_requested": PostTrainingJobStatus.running,
    "completed": PostTrainingJobStatus.completed,
    "error": PostTrainingJobStatus.failed,
    "cancelled": PostTrainingJobStatus.failed,
}

# The job fields worth showing as resources_allocated, when Together reports them.
RESOURCE_FIELDS = (
    "model",
    "model_output_name",
    "token_count",
    "param_count",
    "total_price",
    "epochs_completed",
    "progress",
    "queue_depth",
    "wandb_url",
)

# Llama Stack names LoRA modules as torchtune does; Together (like PEFT) uses the Hugging Face names.
MODULE_ALIASES = {"output_proj": "o_proj", "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head"}
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
OUTPUT_MODULE = "lm_head"
# What a model's limits mean when they list no target modules: the linear layers of a Llama-style model.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", *MLP_MODULES)

# logger_config keys -> Together's Weights & Biases fields (both the short and the Together spelling).
WANDB_FIELDS = {
    "api_key": "wandb_api_key",
    "project": "wandb_project_name",
    "project_name": "wandb_project_name",
    "name": "wandb_name",
    "entity": "wandb_entity",
    "base_url": "wandb_base_url",
}
WANDB_FIELDS.update({value: value for value in list(WANDB_FIELDS.values())})

TOGETHER_HOSTS = frozenset({"api.together.xyz", "api.together.ai"})


@dataclass
class StartingPoint:
    """Which Together model a preference job trains, and the fields that say where it starts from."""

    model: str
    fields: dict[str, Any] = field(default_factory=dict)


class TogetherPostTraining(RemotePostTraining[TogetherPostTrainingConfig]):
    vendor = VENDOR
    statuses = STATUSES
    resource_fields = RESOURCE_FIELDS
    # The datasets API, where the distribution serves it: requests may name a dataset by its uuid.
    datasets: Any | None = None

    # ------------------------------------------------------------------------------------ training
    async def supervised_fine_tune(self, request: PostTrainingSFTRequest) -> PostTrainingJob:
        algorithm = self._algorithm(request.algorithm)
        self._check_request(request)
        wandb = self._wandb_fields(request.logger_config)
        train, validation = await resolve_training_datasets(
            request.dataset, request.validation_dataset, self.datasets, provider=self._id
        )
        model = self.config.base_models.get(request.model, request.model)
        with self.store.creating(request.job_uuid):
            limits = await self._limits(model, "model")
            if algorithm == FinetuningAlgorithm.full:
                training_type: dict[str, Any] = {"type": "Full"}
                self._check_limits(limits, model, "full", request.optimizer_config, request.training_config)
            else:
                lora = request.algorithm_config
                training_type = {
                    "type": "Lora",
                    "lora_r": lora.rank,
                    "lora_alpha": lora.alpha,
                    "lora_dropout": 0.0,
                    "lora_trainable_modules": self._lora_modules(lora, limits, model),
                }
                self._check_limits(
                    limits, model, "lora", request.optimizer_config, request.training_config, rank=lora.rank
                )
            files = await self._upload_datasets(request.job_uuid, train, validation)
            body = {
                "model": model,
                **files,
                **self._hyperparameters(request.job_uuid, request.optimizer_config, request.training_config),
                "training_type": training_type,
                "training_method": {"method": "sft", "train_on_inputs": "auto"},
                **wandb,
            }
            await self._create(request.job_uuid, "sft", body)
        return PostTrainingJob(job_uuid=request.job_uuid)

    async def preference_optimize(self, request: PostTrainingRLHFRequest) -> PostTrainingJob:
        if request.algorithm != RLHFAlgorithm.dpo:
            raise NotSupportedError(
                f"{VENDOR} has no {request.algorithm.value.upper()} fine-tuning (provider '{self._id}' runs "
                "DPO); use algorithm 'dpo', or a remote::emissary post_training provider for GRPO",
                provider=self._id,
                param="algorithm",
            )
        self._check_request(request)
        wandb = self._wandb_fields(request.logger_config)
        train, validation = await resolve_training_datasets(
            request.dataset, request.validation_dataset, self.datasets, provider=self._id
        )
        with self.store.creating(request.job_uuid):
            start = await self._starting_point(request.finetuned_model)
            limits = await self._limits(start.model, "finetuned_model")
            # Without a training_type Together trains a LoRA adapter; DPO has its own batch size cap.
            self._check_limits(limits, start.model, "lora", request.optimizer_config, request.training_config, dpo=True)
            files = await self._upload_datasets(request.job_uuid, train, validation)
            body = {
                "model": start.model,
                **files,
                **self._hyperparameters(request.job_uuid, request.optimizer_config, request.training_config),
                "training_method": {"method": "dpo", "dpo_beta": self.config.dpo_beta},
                **start.fields,
                **wandb,
            }
            await self._create(request.job_uuid, "dpo", body)
        return PostTrainingJob(job_uuid=request.job_uuid)

    # ------------------------------------------------------------------------------ request checks
    def _algorithm(self, algorithm: FinetuningAlgorithm) -> FinetuningAlgorithm:
        if algorithm in (FinetuningAlgorithm.qlora, FinetuningAlgorithm.dora):
            if not self.config.lora_for_qlora_and_dora:
                raise NotSupportedError(
                    f"{VENDOR} has no {algorithm.value.upper()} fine-tuning: use algorithm 'lora' (or 'full'), or set "
                    f"lora_for_qlora_and_dora: true in provider '{self._id}''s config to run such jobs as LoRA",
                    provider=self._id,
                    param="algorithm",
                )
            log.info("%s: running a %s job as LoRA (lora_for_qlora_and_dora)", self._id, algorithm.value)
            return FinetuningAlgorithm.lora
        return algorithm

    def _check_vendor_request(self, request: TrainingRequest) -> None:
        optimizer = request.optimizer_config
        if optimizer.lr_min < 0 or optimizer.lr_min > optimizer.lr:
            raise BadRequestError(
                f"optimizer_config.lr_min ({optimizer.lr_min:g}) must be between 0 and lr ({optimizer.lr:g}): "
                "it is where the learning rate decays to",
                provider=self._id,
                param="optimizer_config.lr_min",
            )

    def _wandb_fields(self, logger_config: dict[str, Any]) -> dict[str, Any]:
        """logger_config as Together's Weights & Biases fields (the key never appears in errors or logs)."""
        fields: dict[str, Any] = {}
        unknown = []
        for key, value in logger_config.items():
            if key == "backend":
                if str(value).lower() not in ("wandb", "weights_and_biases"):
                    raise BadRequestError(
                        f"{VENDOR} reports training metrics to Weights & Biases only; logger_config.backend "
                        f"{value!r} is not available",
                        provider=self._id,
                        param="logger_config.backend",
                    )
            elif key in WANDB_FIELDS:
                if not isinstance(value, str):
                    raise BadRequestError(
                        f"logger_config.{key} must be a string", provider=self._id, param=f"logger_config.{key}"
                    )
                fields[WANDB_FIELDS[key]] = value
            else:
                unknown.append(key)
        if unknown:
            accepted = ", ".join(sorted(k for k in WANDB_FIELDS if not k.startswith("wandb_")))
            raise BadRequestError(
                f"logger_config has keys {VENDOR} cannot use: {', '.join(sorted(unknown))}; it takes Weights & Biases "
                f"settings: {accepted} (or their wandb_ names)",
                provider=self._id,
                param="logger_config",
            )
        return fields

    async def _limits(self, model: str, param: str) -> dict[str, Any]:
        try:
            return await self.service.json("GET", "/fine-tunes/models/limits", params={"model_name": model}) or {}
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            supported = await self._supported_models()
            hint = f" Models it fine-tunes include: {', '.join(supported[:8])}." if supported else ""
            raise BadRequestError(
                f"{VENDOR} cannot fine-tune model {model!r} ({exc.vendor_message}).{hint} Name one of them, or map "
                f"the request's model to one with base_models in provider '{self._id}''s config",
                provider=self._id,
                param=param,
                code="model_not_fine_tunable",
            ) from None

    async def _supported_models(self) -> list[str]:
        try:
            answer = await self.service.json("GET", "/fine-tunes/models/supported")
        except ProviderError:
            return []  # only a hint for an error message already on its way
        models = (answer or {}).get("models", [])
        return [m for m in models if isinstance(m, str)]

    def _check_limits(
        self,
        limits: dict[str, Any],
        model: str,
        kind: str,
        optimizer: OptimizerConfig,
        training: TrainingConfig,
        *,
        rank: int | None = None,
        dpo: bool = False,
    ) -> None:
        section = limits.get(f"{kind}_training")
        if not isinstance(section, dict):
            other = "lora" if kind == "full" else "full"
            raise BadRequestError(
                f"{VENDOR} offers no {'full' if kind == 'full' else 'LoRA'} fine-tuning of {model!r}; "
                f"use algorithm {other!r}",
                provider=self._id,
                param="algorithm",
            )
        problems: list[tuple[str, str]] = []
        max_batch = (
            section.get("max_batch_size_dpo")
            if dpo and section.get("max_batch_size_dpo")
            else section.get("max_batch_size")
        )
        min_batch = section.get("min_batch_size")
        batch = training.batch_size
        if (min_batch is not None and batch < min_batch) or (max_batch is not None and batch > max_batch):
            what = "DPO " if dpo else ""
            problems.append(
                (
                    "training_config.batch_size",
                    f"batch_size {batch} is outside {min_batch or 1}..{max_batch} for {what}{kind} training",
                )
            )
        max_rank = section.get("max_rank")
        if rank is not None and (rank < 1 or (max_rank is not None and rank > max_rank)):
            problems.append(("algorithm_config.rank", f"LoRA rank {rank} is outside 1..{max_rank}"))
        low, high = limits.get("min_learning_rate"), limits.get("max_learning_rate")
        if (low is not None and optimizer.lr < low) or (high is not None and optimizer.lr > high):
            bounds = f"{low if low is not None else 0:g}..{high if high is not None else float('inf'):g}"
            problems.append(("optimizer_config.lr", f"learning rate {optimizer.lr:g} is outside {bounds}"))
        max_epochs = limits.get("max_num_epochs")
        if max_epochs is not None and training.n_epochs > max_epochs:
            problems.append(
                ("training_config.n_epochs", f"n_epochs {training.n_epochs} is above the maximum of {max_epochs}")
            )
        max_evals = limits.get("max_num_evals")
        if max_evals is not None and self.config.n_evals > max_evals:
            problems.append(
                ("n_evals", f"the provider's n_evals {self.config.n_evals} is above the maximum of {max_evals}")
            )
        if problems:
            raise BadRequestError(
                f"the request breaks {VENDOR}'s limits for {model!r}: " + "; ".join(text for _, text in problems),
                details=[{"loc": loc, "in": "body", "message": text} for loc, text in problems],
                provider=self._id,
                code="outside_model_limits",
            )

    def _lora_modules(self, lora: Any, limits: dict[str, Any], model: str) -> str:
        """``all-linear`` when the request covers every linear layer, else the modules comma-separated."""
        wanted = [MODULE_ALIASES.get(name, name) for name in lora.lora_attn_modules]
        if lora.apply_lora_to_mlp:
            wanted += MLP_MODULES
        if lora.apply_lora_to_output:
            wanted.append(OUTPUT_MODULE)
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            raise BadRequestError(
                "LoRA needs modules to adapt: set algorithm_config.lora_attn_modules or apply_lora_to_mlp",
                provider=self._id,
                param="algorithm_config.lora_attn_modules",
            )
        section = limits.get("lora_training") or {}
        targets = [t for t in section.get("target_modules") or DEFAULT_TARGET_MODULES if isinstance(t, str)]
        unknown = [name for name in wanted if name not in targets]
        if unknown:
            raise BadRequestError(
                f"{VENDOR} cannot put LoRA adapters on {', '.join(unknown)} of {model!r}; its modules are "
                f"{', '.join(targets)} (apply_lora_to_mlp adds {', '.join(MLP_MODULES)}, apply_lora_to_output {OUTPUT_MODULE})",
                provider=self._id,
                param="algorithm_config.lora_attn_modules",
            )
        linear = [t for t in targets if t != OUTPUT_MODULE]
        if OUTPUT_MODULE not in wanted and set(linear) <= set(wanted):
            return "all-linear"
        return ",".join(t for t in targets if t in wanted)

    def _hyperparameters(self, job_uuid: str, optimizer: OptimizerConfig, training: TrainingConfig) -> dict[str, Any]:
        return {
            "n_epochs": training.n_epochs,
            "n_checkpoints": self.config.n_checkpoints,
            "batch_size": training.batch_size,
            "learning_rate": optimizer.lr,
            "weight_decay": optimizer.weight_decay,
            "lr_scheduler": {
                "lr_scheduler_type": self.config.lr_scheduler_type,
                "lr_scheduler_args": {"min_lr_ratio": optimizer.lr_min / optimizer.lr},
            },
            "suffix": job_uuid,
        }

    # ------------------------------------------------------------------------ preference starting point
    async def _starting_point(self, url: str) -> StartingPoint:
        """The model a DPO job trains: an earlier Together job, a Hugging Face repo, or preference_model."""
        reference = self._together_reference(url)
        if reference is not None:
            return await self._from_together_job(url, *reference)
        repo = hugging_face_repo(url)
        if repo is not None:
            name, revision = repo
            if self.config.preference_model:
                fields = {"from_hf_model": name, **({"hf_model_revision": revision} if revision else {})}
                return StartingPoint(self.config.preference_model, fields)
            # The repo may be a model Together fine-tunes itself: then it is the model to train.
            if revision is None and name in await self._supported_models():
                return StartingPoint(name)
            raise BadRequestError(
                f"finetuned_model {url!r} is the Hugging Face repo {name!r}, which {VENDOR} does not fine-tune "
                f"directly: set preference_model in provider '{self._id}''s config to the Together base "
                "model it derives from, and the job starts from the repo's weights (from_hf_model)",
                provider=self._id,
                param="finetuned_model",
            )
        if self.config.preference_model:
            log.info(
                "%s: finetuned_model %s names no Together job or Hugging Face repo; training %s",
                self._id,
                url,
                self.config.preference_model,
            )
            return StartingPoint(self.config.preference_model)
        raise BadRequestError(
            f"finetuned_model {url!r} names neither a Hugging Face repo (https://huggingface.co/<org>/<name>) nor a "
            f"{VENDOR} fine-tuning job ({self.config.url.rstrip('/')}/fine-tunes/<id>, or a checkpoint path from this "
            f"provider's artifacts), and provider '{self._id}' has no preference_model configured",
            provider=self._id,
            param="finetuned_model",
        )

    def _together_reference(self, url: str) -> tuple[str, int | None, bool] | None:
        """(job id or output model name, step, is_model_name) when ``url`` names a Together job or model."""
        parts = urllib.parse.urlsplit(url)
        hosts = TOGETHER_HOSTS | {urllib.parse.urlsplit(self.config.url).netloc}
        if parts.scheme not in ("http", "https") or parts.netloc not in hosts:
            return None
        segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
        query = urllib.parse.parse_qs(parts.query)
        steps = query.get("checkpoint_step") or query.get("step")
        step = int(steps[0]) if steps and steps[0].isdigit() else None
        if segments[-2:] == ["finetune", "download"] and query.get("ft_id"):
            return query["ft_id"][0], step, False
        if "fine-tunes" in segments:
            rest = segments[segments.index("fine-tunes") + 1 :]
            if rest:
                return rest[0], step, False
        if "models" in segments:
            rest = segments[segments.index("models") + 1 :]
            if len(rest) >= 2:
                return "/".join(rest[:2]), step, True
        return None

    async def _from_together_job(self, url: str, name: str, step: int | None, is_model_name: bool) -> StartingPoint:
        if is_model_name:
            listed = await self.service.json("GET", "/fine-tunes")
            jobs = [
                j for j in (listed or {}).get("data", []) if isinstance(j, dict) and j.get("model_output_name") == name
            ]
            model = jobs[0].get("model") if jobs else self.config.preference_model
        else:
            name = self.store.vendor_job_id(name)
            try:
                job = await self.service.json("GET", f"/fine-tunes/{segment(name)}")
            except VendorStatusError as exc:
                if exc.vendor_status != 404:
                    raise
                raise BadRequestError(
                    f"finetuned_model {url!r} names {VENDOR} job {name!r}, which {VENDOR} does not know ({exc.vendor_message})",
                    provider=self._id,
                    param="finetuned_model",
                ) from None
            model = (job or {}).get("model") or self.config.preference_model
        if not model:
            raise BadRequestError(
                f"the base model of {name!r} (finetuned_model) is unknown: set preference_model in provider "
                f"'{self._id}''s config",
                provider=self._id,
                param="finetuned_model",
            )
        checkpoint = f"{name}:{step}" if step is not None else name
        return StartingPoint(model, {"from_checkpoint": checkpoint})

    # -------------------------------------------------------------------------------- uploads, create
    async def _upload_datasets(self, job_uuid: str, train: Dataset, validation: Dataset) -> dict[str, Any]:
        use_validation = self.config.n_evals > 0
        train_data, validation_data = await read_training_data(
            self._read, train.content_url, validation.content_url if use_validation else None
        )
        files: dict[str, Any] = {"training_file": await self._upload(job_uuid, "train", train_data)}
        if use_validation:
            files["validation_file"] = (
                await self._upload(job_uuid, "validation", validation_data)
                if validation_data
                else files["training_file"]
            )
            files["n_evals"] = self.config.n_evals
        return files

    async def _read(self, url: str, where: str) -> bytes:
        data = await self.reader.read(url, where)
        if file_extension(data) == ".jsonl":
            check_jsonl(data, where, self._id)
        return data

    async def _upload(self, job_uuid: str, role: str, data: bytes) -> str:
        filename = f"{upload_name(job_uuid, role)}{file_extension(data)}"
        form = {"purpose": "fine-tune", "file_name": filename}
        return await self._upload_file(
            "/files/upload", filename, data, form, answered=f"the upload of {filename} without a file id"
        )

    async def _create(self, job_uuid: str, kind: str, body: dict[str, Any]) -> None:
        await self._start_job(
            job_uuid,
            kind,
            "/fine-tunes",
            body,
            answered="POST /fine-tunes without a job id",
            details={"model": body["model"]},
            answer_details=("model_output_name",),
        )

    # ---------------------------------------------------------------------------------- job hooks
    def _job_path(self, record: TrainingJobRecord) -> str:
        return f"/fine-tunes/{segment(record.vendor_job_id)}"

    async def _events(self, record: TrainingJobRecord) -> list[dict[str, Any]]:
        answer = await self._vendor(record, "GET", f"{self._job_path(record)}/events")
        return [event for event in (answer or {}).get("data", []) if isinstance(event, dict)]

    async def _log_lines(self, record: TrainingJobRecord) -> list[str]:
        return [_log_line(event) for event in await self._events(record)]

    async def _checkpoints(self, record: TrainingJobRecord) -> list[Checkpoint]:
        try:
            answer = await self.service.json("GET", f"{self._job_path(record)}/checkpoints")
            items = [
                (step_number(item.get("step")), item.get("checkpoint_type"))
                for item in (answer or {}).get("data", [])
                if isinstance(item, dict)
            ]
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            # No checkpoint listing for this job: the checkpoint_save events say the same.
            events = await self._events(record)
            items = [
                (step_number(event.get("step")), "intermediate")
                for event in events
                if event.get("type") == "checkpoint_save"
            ]
        return in_step_order(
            Checkpoint(
                iters=step,
                path=self._download_url(record.vendor_job_id, None if "final" in str(kind or "").lower() else step),
            )
            for step, kind in items
            if step is not None
        )

    def _download_url(self, vendor_id: str, step: int | None) -> str:
        # Together's checkpoint paths (s3://...) are not URLs a client can use; its download route is.
        query = {"ft_id": vendor_id, **({"checkpoint_step": step} if step is not None else {})}
        return f"{self.config.url.rstrip('/')}/finetune/download?{urllib.parse.urlencode(query)}"

    async def _listed_jobs(self, records: list[TrainingJobRecord]) -> dict[str, dict[str, Any]]:
        listed = await self.service.json("GET", "/fine-tunes")
        jobs = (listed or {}).get("data", [])
        return {job["id"]: job for job in jobs if isinstance(job, dict) and isinstance(job.get("id"), str)}

    async def _cancel(self, record: TrainingJobRecord) -> dict[str, Any] | None:
        # Together answers with the job (cancel_requested until it has stopped): no second read needed.
        return await self._vendor(record, "POST", f"{self._job_path(record)}/cancel")


def _log_line(event: dict[str, Any]) -> str:
    """``{created_at} [{level}] {type} step={step}/{total_steps}: {message}``, the step part when known."""
    step, total = event.get("step"), event.get("total_steps")
    progress = f" step={step}/{total}" if isinstance(step, int) and isinstance(total, int) and total else ""
    level = event.get("level") or "info"
    return (
        f"{event.get('created_at', '-')} [{level}] {event.get('type', 'event')}{progress}: {event.get('message', '')}"
    )


async def build(config: TogetherPostTrainingConfig, context: ProviderContext) -> TogetherPostTraining:
    adapter = TogetherPostTraining.for_context(config, together_service(config, context), context)
    adapter.datasets = context.deps.get(Api.datasets)
    return adapter
