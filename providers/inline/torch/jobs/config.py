"""Configuration of inline::torch post-training (no heavy imports: the runtime validates it before building)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_stack.providers.utils.datasets import DatasetSourceConfig

TRAINING_MODULE = "llama_stack.providers.inline.torch.training"


class DPOAdapterConfig(BaseModel):
    """What a preference-optimization (DPO) job trains: the seed's DPO request names no adapter of its own."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["lora", "dora", "full"] = Field(
        default="lora", description="lora or dora: an adapter over the starting model; full: every weight trains."
    )
    lora_attn_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="The attention projections the adapter covers.",
    )
    apply_lora_to_mlp: bool = Field(default=False, description="Also adapt the MLP projections.")
    apply_lora_to_output: bool = Field(default=False, description="Also adapt the output projection (lm_head).")
    rank: int = Field(default=8, ge=1, le=1024)
    alpha: int = Field(default=16, ge=1)


class TorchPostTrainingConfig(BaseModel):
    """The ``config:`` block of an ``inline::torch`` post_training provider."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
        description="Where jobs train: 'auto' (CUDA when the training process sees a GPU, else the CPU), 'cpu', "
        "'cuda' or 'cuda:N'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="The weights' type while training: 'auto' is bfloat16 on CUDA, float32 on the CPU."
    )
    max_concurrent_jobs: int = Field(
        default=1,
        ge=1,
        description="Jobs training at once; more wait as 'scheduled' and start in the order they came when one ends.",
    )
    nproc_per_node: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Processes per job on this machine (one per GPU); more than one runs the job under torchrun.",
    )
    nnodes: int = Field(
        default=1,
        ge=1,
        description="Machines a job spans; more than one needs rdzv_endpoint, and the other machines join each job "
        "(see docs/providers/torch-post-training.md).",
    )
    rdzv_endpoint: str | None = Field(
        default=None,
        description="host:port of torchrun's rendezvous (c10d) when nnodes > 1; this machine is the host.",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="How several processes share a job: ddp (each holds the model, gradients are averaged) or fsdp "
        "(parameters are sharded; the request's FSDP flags apply).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="torch.distributed's backend: auto is nccl on CUDA, gloo on the CPU."
    )
    checkpoint_roots: list[Path] = Field(
        default_factory=list,
        description="Folders besides this provider's own jobs folder whose checkpoints a request's model (or a DPO "
        "request's finetuned_model) may name; anywhere else is refused.",
    )
    preference_model: str | None = Field(
        default=None,
        description="The served model a DPO job starts from when the request's finetuned_model is not a file:// "
        "checkpoint URL.",
    )
    dpo: DPOAdapterConfig = Field(default_factory=DPOAdapterConfig, description="What DPO jobs train.")
    max_seq_len: int = Field(default=512, ge=8, description="Tokens per training row at most; longer rows are cut.")
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Rows per forward pass; smaller than a request's batch_size accumulates gradients. Unset: the "
        "whole batch.",
    )
    checkpoint_every_steps: int = Field(
        default=0, ge=0, description="Save a checkpoint every N optimizer steps; 0: at each epoch's end only."
    )
    keep_checkpoints: int = Field(default=0, ge=0, description="Keep a job's last N checkpoints; 0 keeps all.")
    seed: int = Field(default=0, description="The seed of every job: the same request trains the same weights.")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per training process; unset: torch's default for one process, the cores shared "
        "out when a job runs several.",
    )
    max_rows: int = Field(
        default=100_000, ge=1, description="The most rows a training (or validation) dataset may have."
    )
    datasets: DatasetSourceConfig = Field(
        default_factory=DatasetSourceConfig, description="Where the datasets of requests may be read from."
    )
    cancel_grace_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds a cancelled job gets to stop after SIGTERM before its processes are killed.",
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the server looks for ended jobs it did not start itself (after a restart), to start "
        "the next scheduled one.",
    )
    log_lines: int = Field(default=1000, ge=1, le=100_000, description="The last N lines the logs route answers.")
    log_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="The most bytes of a job's log the logs route reads (its end)."
    )
    training_module: str = Field(
        default=TRAINING_MODULE,
        description="The Python module a job runs (python -m <module> <job folder>); another trainer following "
        "the same job-folder contract may replace the built-in one.",
    )

    @model_validator(mode="after")
    def _check(self) -> TorchPostTrainingConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the rendezvous on this machine)")
        if self.rdzv_endpoint is not None and not re.fullmatch(r"[\w.\-\[\]:]+:\d+", self.rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} must look like host:port")
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", self.training_module):
            raise ValueError(f"training_module {self.training_module!r} must be a dotted module name")
        return self

    @property
    def processes(self) -> int:
        """Processes per job in all (every node's)."""
        return self.nproc_per_node * self.nnodes
