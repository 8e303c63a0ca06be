"""Together's files and fine-tuning routes, as a deterministic state machine in ``fake.state``
(:func:`reset` clears it).

A created job is ``pending``; a test moves it on with :func:`advance` (pending -> running -> a checkpoint
at step 50 -> completed with a final checkpoint at step 100), or ends it with :func:`fail`. A cancel makes
it ``cancel_requested`` and the next :func:`advance` ``cancelled``. Every change adds the events Together
would report, with timestamps from a per-job clock (10 minutes a step from 2024-05-17T17:35:45Z), so
answers are the same on every run.

Choices where the specs disagree or say nothing:

- Job ids are plain UUIDs: the YAML's ``FinetuneResponse.id`` has ``format: uuid`` (which the fake
  enforces on its own answers), although the docs say ids start with ``ft-``.
- ``GET /fine-tunes/{id}/checkpoints`` (LAP only, item shape unspecified) answers
  ``{data: [{step, path, created_at, checkpoint_type}]}``, ``checkpoint_type`` ``intermediate`` or ``final``.
- ``POST /files/upload`` (form fields unspecified) wants a ``file`` part and ``purpose: fine-tune``.
- Job answers carry ``events: []``; the events are at ``/fine-tunes/{id}/events``.
- The service enforces the model limits itself too (a request past them gets 400), as Together does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .together import error_body
from .vendor_server import FakeVendor, Recorded, Reply

TOTAL_STEPS = 100
CHECKPOINT_STEP = 50
START = datetime(2024, 5, 17, 17, 35, 45, tzinfo=timezone.utc)
TERMINAL = ("completed", "error", "cancelled")

LLAMA_8B = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
QWEN_72B = "Qwen/Qwen2.5-72B-Instruct"
LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# What GET /fine-tunes/models/limits answers per model (LAP shape); others get 404.
LIMITS: dict[str, dict[str, Any]] = {
    LLAMA_8B: {
        "model_name": LLAMA_8B,
        "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 8},
        "lora_training": {
            "max_batch_size": 32,
            "max_batch_size_dpo": 16,
            "min_batch_size": 8,
            "max_rank": 64,
            "target_modules": LINEAR_MODULES,
        },
        "max_num_epochs": 20,
        "max_num_evals": 10,
        "max_learning_rate": 0.01,
        "min_learning_rate": 1e-06,
        "supports_vision": False,
        "supports_tools": True,
        "supports_reasoning": False,
        "merge_output_lora": True,
    },
    # LoRA only: no full fine-tuning of the 72B model.
    QWEN_72B: {
        "model_name": QWEN_72B,
        "lora_training": {
            "max_batch_size": 16,
            "max_batch_size_dpo": 8,
            "min_batch_size": 8,
            "max_rank": 32,
            "target_modules": LINEAR_MODULES,
        },
        "max_num_epochs": 10,
        "max_num_evals": 5,
        "max_learning_rate": 0.001,
        "min_learning_rate": 1e-06,
    },
}

# POST /fine-tunes fields echoed in job answers (never the W&B key).
ECHOED = (
    "training_file",
    "validation_file",
    "model",
    "n_epochs",
    "n_checkpoints",
    "n_evals",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "lr_scheduler",
    "suffix",
    "training_type",
    "training_method",
    "wandb_project_name",
    "wandb_name",
    "from_checkpoint",
    "from_hf_model",
    "hf_model_revision",
)


@dataclass
class FineTunes:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    checkpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    clocks: dict[str, int] = field(default_factory=dict)
    counter: int = 0

    def clear(self) -> None:
        # In place: the installed handlers hold this object.
        for store in (self.files, self.jobs, self.events, self.checkpoints, self.clocks):
            store.clear()

    def next_id(self) -> int:
        self.counter += 1
        return self.counter


def state(fake: FakeVendor) -> FineTunes:
    return fake.state.setdefault("together_fine_tunes", FineTunes())


def reset(fake: FakeVendor) -> None:
    """Forget every file and job (``FakeVendor.reset`` keeps handler state)."""
    state(fake).clear()


def job_by_suffix(fake: FakeVendor, suffix: str) -> dict[str, Any]:
    """The job created for a job_uuid (Llama Stack sends the job_uuid as the suffix)."""
    matches = [job for job in state(fake).jobs.values() if job.get("suffix") == suffix]
    assert len(matches) == 1, f"{len(matches)} fake Together jobs have suffix {suffix!r}"
    return matches[0]


def file_content(fake: FakeVendor, file_id: str) -> bytes:
    return state(fake).files[file_id]["content"]


def _stamp(ft: FineTunes, job_id: str) -> str:
    moment = START + timedelta(minutes=10 * ft.clocks[job_id])
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _tick(ft: FineTunes, job_id: str) -> str:
    ft.clocks[job_id] += 1
    ft.jobs[job_id]["updated_at"] = _stamp(ft, job_id)
    return ft.jobs[job_id]["updated_at"]


def _event(
    ft: FineTunes,
    job_id: str,
    kind: str,
    message: str,
    *,
    level: str = "info",
    step: int = 0,
    checkpoint_path: str = "",
) -> None:
    ft.events[job_id].append(
        {
            "object": "fine-tune-event",
            "created_at": _stamp(ft, job_id),
            "level": level,
            "message": message,
            "type": kind,
            "param_count": 8030261248,
            "token_count": 0,
            "total_steps": TOTAL_STEPS,
            "wandb_url": "",
            "step": step,
            "checkpoint_path": checkpoint_path,
            "model_path": "",
            "training_offset": 0,
            "hash": "",
        }
    )


def advance(fake: FakeVendor, job_id: str) -> dict[str, Any]:
    """Move a job one step on its way; returns the job."""
    ft = state(fake)
    job = ft.jobs[job_id]
    status = job["status"]
    if status == "pending":
        job["status"] = "running"
        job["started_at"] = _tick(ft, job_id)
        _event(ft, job_id, "job_start", "Job started")
        _event(ft, job_id, "training_start", "Training started")
    elif status == "running" and not ft.checkpoints[job_id]:
        _tick(ft, job_id)
        path = f"s3://together-fine-tunes/{job_id}/checkpoint-{CHECKPOINT_STEP}"
        ft.checkpoints[job_id].append(
            {"step": CHECKPOINT_STEP, "path": path, "created_at": job["updated_at"], "checkpoint_type": "intermediate"}
        )
        _event(
            ft,
            job_id,
            "checkpoint_save",
            f"Checkpoint saved at step {CHECKPOINT_STEP}",
            step=CHECKPOINT_STEP,
            checkpoint_path=path,
        )
        job.update(epochs_completed=max(1, job.get("n_epochs", 1) // 2), token_count=425000)
    elif status == "running":
        _tick(ft, job_id)
        path = f"s3://together-fine-tunes/{job_id}/final"
        ft.checkpoints[job_id].append(
            {"step": TOTAL_STEPS, "path": path, "created_at": job["updated_at"], "checkpoint_type": "final"}
        )
        _event(ft, job_id, "training_complete", "Training completed", step=TOTAL_STEPS)
        _event(ft, job_id, "job_complete", f"Job finished; model {job['model_output_name']}", step=TOTAL_STEPS)
        job.update(status="completed", epochs_completed=job.get("n_epochs", 1), token_count=850000, total_price=1500)
    elif status == "cancel_requested":
        _tick(ft, job_id)
        job["status"] = "cancelled"
        _event(ft, job_id, "job_stopped", "Job cancelled by the user")
    return job


def fail(fake: FakeVendor, job_id: str, message: str = "CUDA out of memory") -> None:
    ft = state(fake)
    _tick(ft, job_id)
    ft.jobs[job_id]["status"] = "error"
    _event(ft, job_id, "job_error", message, level="error")


def _view(ft: FineTunes, job_id: str) -> dict[str, Any]:
    return {**ft.jobs[job_id], "events": []}


def _bad(message: str) -> Reply:
    return Reply(error_body(400, message), 400)


def _not_found(what: str) -> Reply:
    return Reply(error_body(404, f"{what} not found"), 404)


def _check_job_request(ft: FineTunes, body: dict[str, Any]) -> str | None:
    """What Together would refuse in a POST /fine-tunes body; None when it is fine."""
    for key in ("training_file", "validation_file"):
        if key in body and body[key] not in ft.files:
            return f"{key} {body[key]!r} is not an uploaded file"
    limits = LIMITS.get(body["model"])
    if limits is None:
        return f"model {body['model']!r} is not available for fine-tuning"
    training_type = body.get("training_type") or {"type": "Lora"}
    section = limits.get("full_training" if training_type["type"] == "Full" else "lora_training")
    if section is None:
        return f"{training_type['type']} training is not supported for {body['model']}"
    if training_type.get("lora_r", 0) > section.get("max_rank", 0) and training_type["type"] == "Lora":
        return f"lora_r must be at most {section['max_rank']}"
    method = (body.get("training_method") or {}).get("method", "sft")
    if method not in ("sft", "dpo"):
        return f"unknown training method {method!r}"
    batch_cap = section["max_batch_size_dpo"] if method == "dpo" else section["max_batch_size"]
    if isinstance(body.get("batch_size"), int) and not section["min_batch_size"] <= body["batch_size"] <= batch_cap:
        return f"batch_size must be between {section['min_batch_size']} and {batch_cap}"
    if not limits["min_learning_rate"] <= body.get("learning_rate", 1e-5) <= limits["max_learning_rate"]:
        return "learning_rate is outside the model's limits"
    if body.get("n_epochs", 1) > limits["max_num_epochs"]:
        return f"n_epochs must be at most {limits['max_num_epochs']}"
    source = body.get("from_checkpoint")
    if source is not None:
        name = source.split(":")[0]
        if name not in ft.jobs and not any(j["model_output_name"] == name for j in ft.jobs.values()):
            return f"from_checkpoint {source!r} names no job of yours"
    return None


def install(fake: FakeVendor) -> None:
    ft = state(fake)

    @fake.route("POST", "/files/upload")
    def upload(request: Recorded, params: dict[str, str]) -> Any:
        part = request.form.get("file")
        if not isinstance(part, tuple):
            return _bad("a file is required")
        if request.form.get("purpose") != "fine-tune":
            return _bad("purpose must be 'fine-tune'")
        filename, content = part
        file_type = "parquet" if filename.endswith(".parquet") else "jsonl"
        lines = sum(1 for line in content.splitlines() if line.strip()) if file_type == "jsonl" else 0
        file_id = f"file-{ft.next_id():06d}"
        ft.files[file_id] = {"filename": filename, "content": content, "purpose": "fine-tune"}
        return {
            "id": file_id,
            "object": "file",
            "created_at": 1715021438,
            "filename": filename,
            "bytes": len(content),
            "purpose": "fine-tune",
            "FileType": file_type,
            "Processed": True,
            "LineCount": lines,
        }

    @fake.route("GET", "/fine-tunes/models/supported")
    def supported(request: Recorded, params: dict[str, str]) -> Any:
        return {"models": sorted(LIMITS)}

    @fake.route("GET", "/fine-tunes/models/limits")
    def limits(request: Recorded, params: dict[str, str]) -> Any:
        found = LIMITS.get(request.query.get("model_name", ""))
        return (
            found
            if found is not None
            else Reply(error_body(404, "Model not found or not supported for fine-tuning"), 404)
        )

    @fake.route("POST", "/fine-tunes")
    def create(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        problem = _check_job_request(ft, body)
        if problem:
            return _bad(problem)
        number = ft.next_id()
        job_id = f"{number:08x}-0000-4000-8000-{number:012x}"
        ft.clocks[job_id] = 0
        ft.events[job_id] = []
        ft.checkpoints[job_id] = []
        suffix = body.get("suffix", "ft")
        ft.jobs[job_id] = {
            "id": job_id,
            "status": "pending",
            "created_at": _stamp(ft, job_id),
            "updated_at": _stamp(ft, job_id),
            "model_output_name": f"fake-org/{body['model'].split('/')[-1]}-{suffix}",
            **{key: body[key] for key in ECHOED if key in body},
            "token_count": 0,
            "param_count": 8030261248,
            "total_price": 0,
            "epochs_completed": 0,
        }
        _event(ft, job_id, "job_pending", "Fine tune request created")
        return _view(ft, job_id)

    @fake.route("GET", "/fine-tunes")
    def listing(request: Recorded, params: dict[str, str]) -> Any:
        return {"data": [_view(ft, job_id) for job_id in ft.jobs]}

    @fake.route("GET", "/fine-tunes/{id}")
    def get(request: Recorded, params: dict[str, str]) -> Any:
        return _view(ft, params["id"]) if params["id"] in ft.jobs else _not_found("Fine-tune job")

    @fake.route("POST", "/fine-tunes/{id}/cancel")
    def cancel(request: Recorded, params: dict[str, str]) -> Any:
        job = ft.jobs.get(params["id"])
        if job is None:
            return _not_found("Fine-tune job")
        if job["status"] in TERMINAL or job["status"] == "cancel_requested":
            return _bad(f"job {params['id']} is {job['status']} and cannot be cancelled")
        _tick(ft, params["id"])
        job["status"] = "cancel_requested"
        _event(ft, params["id"], "cancel_requested", "Cancel requested by the user")
        return _view(ft, params["id"])

    @fake.route("GET", "/fine-tunes/{id}/events")
    def events(request: Recorded, params: dict[str, str]) -> Any:
        if params["id"] not in ft.jobs:
            return _not_found("Fine-tune job")
        return {"data": ft.events[params["id"]]}

    @fake.route("GET", "/fine-tunes/{id}/checkpoints")
    def checkpoints(request: Recorded, params: dict[str, str]) -> Any:
        if params["id"] not in ft.jobs:
            return _not_found("Fine-tune job")
        return {"data": ft.checkpoints[params["id"]]}

    @fake.route("GET", "/finetune/download")
    def download(request: Recorded, params: dict[str, str]) -> Any:
        job_id = request.query.get("ft_id", "")
        if job_id not in ft.jobs:
            return _not_found("Fine-tune ID")
        saved = {c["step"]: c for c in ft.checkpoints[job_id]}
        step = int(request.query["checkpoint_step"]) if "checkpoint_step" in request.query else None
        if (step is None and ft.jobs[job_id]["status"] != "completed") or (step is not None and step not in saved):
            return _bad(f"no checkpoint {step if step is not None else 'final'} for {job_id}")
        name = ft.jobs[job_id]["model_output_name"].split("/")[-1]
        size = len(json.dumps(saved.get(step or TOTAL_STEPS, {})))
        return {
            "object": "local",
            "id": job_id,
            "checkpoint_step": step or TOTAL_STEPS,
            "filename": f"{name}.tar.zst",
            "size": size,
        }
