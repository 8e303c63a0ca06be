"""A seed training request as a :class:`JobSpec` and its rows, or a 400 naming the field it cannot honour.

Every check is made here, before a job folder exists or a process starts: first what the request says on its
own (numbers, flags, algorithm settings), then the weights it names, then its datasets (read and checked row
by row). The order is the order problems are reported in.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llama_stack.apis.datasets import Dataset
from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.post_training import (
    DPOAlignmentConfig,
    FinetuningAlgorithm,
    OptimizerConfig,
    PostTrainingRLHFRequest,
    PostTrainingSFTRequest,
    RLHFAlgorithm,
    TrainingConfig,
)
from llama_stack.providers.inline.torch.training.spec import (
    AdapterSpec,
    BaseModelSpec,
    DataSpec,
    DistributedSpec,
    DPOSpec,
    JobSpec,
    LoopSpec,
    OptimizerSpec,
)
from llama_stack.providers.utils.datasets import DatasetReader, read_rows, resolve_dataset
from llama_stack.providers.utils.training.requests import check_learning_rate, refuse_hyperparam_search

from .config import TorchPostTrainingConfig
from .data import Columns, check_same_columns, preference_columns, sft_columns, training_rows
from .models import ADAPTER_CONFIG, CheckpointRoots, checkpoint_base, model_base

log = logging.getLogger(__name__)

TRAINER = "inline::torch"
QLORA_INSTALL = "pip install 'llama-stack-runtime[qlora]'"

# Bounds on what a request may ask for, checked before any work.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_ITERS = 10_000_000
MAX_RANK = 1024
MAX_ALPHA = 65_536

# The seed names attention projections as torchtune does; the models load with Hugging Face's names.
MODULE_ALIASES = {"output_proj": "o_proj"}
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
OUTPUT_MODULE = "lm_head"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PlannedJob:
    """A checked request: the job's spec and the rows to write beside it."""

    spec: JobSpec
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]


class DeviceProbe:
    """Where this provider's jobs train, learnt (for 'auto') by asking torch in a thread, once, when needed."""

    def __init__(self, device: str):
        self.device = device
        self._cuda: bool | None = None if device == "auto" else device.startswith("cuda")

    async def cuda(self) -> bool:
        if self._cuda is None:
            self._cuda = await asyncio.to_thread(_torch_sees_cuda)
        return self._cuda

    async def describe(self) -> str:
        if self.device == "auto":
            return "the CPU (device 'auto' and torch sees no CUDA GPU)" if not await self.cuda() else "a CUDA GPU"
        return "the CPU (device 'cpu')" if self.device == "cpu" else f"CUDA GPU {self.device!r}"


def _torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


class RequestPlanner:
    """Turns requests into :class:`PlannedJob` for one provider."""

    def __init__(
        self,
        config: TorchPostTrainingConfig,
        provider: str,
        *,
        inference: Any | None,
        datasets: Any | None,
        reader: DatasetReader,
        roots: CheckpointRoots,
        device: DeviceProbe,
    ):
        self.config = config
        self.provider = provider
        self.inference = inference
        self.datasets = datasets
        self.reader = reader
        self.roots = roots
        self.device = device

    def bad(self, param: str, message: str) -> BadRequestError:
        return BadRequestError(f"{param}: {message}", provider=self.provider, param=param)

    # ----------------------------------------------------------------------------------- the routes
    async def sft(self, request: PostTrainingSFTRequest) -> PlannedJob:
        self._check_common(request.hyperparam_search_config, request.logger_config)
        optimizer = self._optimizer(request.optimizer_config)
        loop, distributed = self._loop(request.training_config)
        algorithm = request.algorithm.value
        adapter = None
        if request.algorithm != FinetuningAlgorithm.full:
            config = request.algorithm_config
            adapter = self._adapter(
                algorithm,
                config.lora_attn_modules,
                config.apply_lora_to_mlp,
                config.apply_lora_to_output,
                config.rank,
                config.alpha,
                "algorithm_config",
            )
        if request.algorithm == FinetuningAlgorithm.qlora:
            await self._check_qlora()
        base = model_base(request.model, "model", self.inference, self.roots, self.provider)
        self._check_start(base, adapter, "model")
        columns, train, validation = await self._data(request.dataset, request.validation_dataset, sft_columns)
        spec = self._spec(
            request.job_uuid, "sft", algorithm, base, adapter, None, optimizer, loop, distributed, columns
        )
        return PlannedJob(spec, train, validation)

    async def dpo(self, request: PostTrainingRLHFRequest) -> PlannedJob:
        if request.algorithm != RLHFAlgorithm.dpo:
            raise self.bad(
                "algorithm",
                f"{TRAINER} offers DPO only ({request.algorithm.value!r} is not offered here): send algorithm 'dpo' "
                "with a DPOAlignmentConfig",
            )
        self._check_common(request.hyperparam_search_config, request.logger_config)
        assert isinstance(request.algorithm_config, DPOAlignmentConfig)  # the request's own validator checked it
        dpo = self._dpo(request.algorithm_config)
        optimizer = self._optimizer(request.optimizer_config)
        loop, distributed = self._loop(request.training_config)
        settings = self.config.dpo
        adapter = None
        if settings.algorithm != "full":
            adapter = self._adapter(
                settings.algorithm,
                settings.lora_attn_modules,
                settings.apply_lora_to_mlp,
                settings.apply_lora_to_output,
                settings.rank,
                settings.alpha,
                "dpo",
            )
        base = self._dpo_start(request.finetuned_model)
        if base.adapter is not None and adapter is not None:
            # The request cannot say how its adapter looks: DPO continues the checkpoint's adapter as it is.
            adapter = self._adapter_of(base.adapter, "finetuned_model")
        self._check_start(base, adapter, "finetuned_model")
        columns, train, validation = await self._data(request.dataset, request.validation_dataset, preference_columns)
        spec = self._spec(request.job_uuid, "dpo", "dpo", base, adapter, dpo, optimizer, loop, distributed, columns)
        return PlannedJob(spec, train, validation)

    # --------------------------------------------------------------------------------- the checks
    def _check_common(self, hyperparam_search_config: dict[str, Any], logger_config: dict[str, Any]) -> None:
        refuse_hyperparam_search(hyperparam_search_config, trainer=TRAINER, provider=self.provider)
        if logger_config:
            raise self.bad(
                "logger_config",
                f"{TRAINER} logs to the job's own files only (its log lines through /post_training/job/logs, its "
                "loss curve through /post_training/job/artifacts); it has no logger to configure: send an empty "
                "logger_config",
            )

    def _finite(self, param: str, value: float) -> float:
        if not math.isfinite(value):
            raise self.bad(param, f"must be a finite number, got {value}")
        return value

    def _optimizer(self, config: OptimizerConfig) -> OptimizerSpec:
        lr = self._finite("optimizer_config.lr", config.lr)
        check_learning_rate(config, provider=self.provider)
        lr_min = self._finite("optimizer_config.lr_min", config.lr_min)
        if not 0 <= lr_min <= lr:
            raise self.bad(
                "optimizer_config.lr_min",
                f"must be between 0 and lr ({lr:g}), got {lr_min:g}: it is where the learning rate decays to",
            )
        weight_decay = self._finite("optimizer_config.weight_decay", config.weight_decay)
        if weight_decay < 0:
            raise self.bad("optimizer_config.weight_decay", f"must be 0 or more, got {weight_decay:g}")
        return OptimizerSpec(type=config.optimizer_type.value, lr=lr, lr_min=lr_min, weight_decay=weight_decay)

    def _loop(self, config: TrainingConfig) -> tuple[LoopSpec, DistributedSpec]:
        for name, value, low, high in (
            ("n_epochs", config.n_epochs, 1, MAX_EPOCHS),
            ("batch_size", config.batch_size, 1, MAX_BATCH_SIZE),
            ("n_iters", config.n_iters, 0, MAX_ITERS),
        ):
            if not low <= value <= high:
                raise self.bad(f"training_config.{name}", f"must be between {low} and {high}, got {value}")
        processes = self.config.processes
        if config.batch_size < processes:
            raise self.bad(
                "training_config.batch_size",
                f"must be at least the job's {processes} processes (each takes a share of every batch), got "
                f"{config.batch_size}",
            )
        fsdp = self.config.strategy == "fsdp" and processes > 1
        for flag in ("memory_efficient_fsdp_wrap", "fsdp_cpu_offload"):
            if getattr(config, flag) and not fsdp:
                raise self.bad(
                    f"training_config.{flag}",
                    f"needs FSDP, and provider '{self.provider}' trains each job in {processes} process(es) with "
                    f"strategy {self.config.strategy if processes > 1 else 'none'}: set strategy: fsdp and "
                    "nproc_per_node: 2 or more (one per GPU) in its config, or send the flag false",
                )
        loop = LoopSpec(
            n_epochs=config.n_epochs,
            batch_size=config.batch_size,
            shuffle=config.shuffle,
            n_iters=config.n_iters,
            activation_checkpointing=config.enable_activation_checkpointing,
            micro_batch_size=self.config.micro_batch_size,
            max_seq_len=self.config.max_seq_len,
            checkpoint_every_steps=self.config.checkpoint_every_steps,
            keep_checkpoints=self.config.keep_checkpoints,
        )
        distributed = DistributedSpec(
            strategy=self.config.strategy if processes > 1 else "none",
            fsdp_wrap_blocks=config.memory_efficient_fsdp_wrap,
            fsdp_cpu_offload=config.fsdp_cpu_offload,
            backend=self.config.backend,
        )
        return loop, distributed

    def _adapter(
        self,
        kind: str,
        attn_modules: list[str],
        mlp: bool,
        output: bool,
        rank: int,
        alpha: int,
        where: str,
    ) -> AdapterSpec:
        modules = []
        for index, name in enumerate(attn_modules):
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                raise self.bad(f"{where}.lora_attn_modules[{index}]", f"{name!r} is not a module name (e.g. q_proj)")
            modules.append(MODULE_ALIASES.get(name, name))
        if not modules and not mlp and not output:
            raise self.bad(
                f"{where}.lora_attn_modules",
                "the adapter would cover nothing: name attention projections (q_proj, k_proj, v_proj, o_proj) or "
                "set apply_lora_to_mlp / apply_lora_to_output",
            )
        if not 1 <= rank <= MAX_RANK:
            raise self.bad(f"{where}.rank", f"must be between 1 and {MAX_RANK}, got {rank}")
        if not 1 <= alpha <= MAX_ALPHA:
            raise self.bad(f"{where}.alpha", f"must be between 1 and {MAX_ALPHA}, got {alpha}")
        shape = {
            "attn_modules": list(dict.fromkeys(modules)),
            "mlp": mlp,
            "output": output,
            "rank": rank,
            "alpha": alpha,
        }
        return AdapterSpec.model_validate({"kind": kind, **shape})

    async def _check_qlora(self) -> None:
        if not await self.device.cuda():
            raise self.bad(
                "algorithm",
                f"QLoRA needs a CUDA GPU (4-bit weights through bitsandbytes), and provider '{self.provider}' trains "
                f"on {await self.device.describe()}: use algorithm 'lora' or 'dora', or train on a machine with a "
                "CUDA GPU",
            )
        if not _bitsandbytes_installed():
            raise self.bad(
                "algorithm",
                f"QLoRA needs bitsandbytes, which is not installed where provider '{self.provider}' runs: "
                f"`{QLORA_INSTALL}`",
            )

    def _check_start(self, base: BaseModelSpec, adapter: AdapterSpec | None, where: str) -> None:
        """A job starting from an adapter continues it: the request must ask for an adapter of its shape."""
        if base.adapter is None:
            return
        if adapter is None:
            raise self.bad(
                where,
                f"{base.adapter!r} is an adapter: a full fine-tune starts from full weights; continue the adapter "
                "with lora or dora, or name the model it applies to",
            )
        shape = _adapter_shape(Path(base.adapter))
        if shape is None:
            raise self.bad(where, f"{str(Path(base.adapter) / ADAPTER_CONFIG)!r} cannot be read")
        kind, rank, alpha = shape
        asked = "lora" if adapter.kind == "qlora" else adapter.kind
        for field, have, want in (
            ("algorithm", kind, asked),
            ("rank", rank, adapter.rank),
            ("alpha", alpha, adapter.alpha),
        ):
            if have != want:
                raise self.bad(
                    where,
                    f"continues the adapter {base.adapter!r}, whose {field} is {have!r}; the request asks for "
                    f"{want!r}: send the adapter's own {field}",
                )

    def _adapter_of(self, folder: str, where: str) -> AdapterSpec:
        """The AdapterSpec of an adapter checkpoint, as its adapter_config.json describes it."""
        shape = _adapter_shape(Path(folder))
        config = _adapter_config(Path(folder)) or {}
        targets = config.get("target_modules") or []
        if shape is None or not isinstance(targets, list):
            raise self.bad(where, f"{str(Path(folder) / ADAPTER_CONFIG)!r} cannot be read as a LoRA adapter's config")
        kind, rank, alpha = shape
        attn = [name for name in targets if name not in MLP_MODULES and name != OUTPUT_MODULE]
        return AdapterSpec(
            kind=kind,
            attn_modules=attn,
            mlp=any(name in MLP_MODULES for name in targets),
            output=OUTPUT_MODULE in targets,
            rank=rank,
            alpha=alpha,
        )

    def _dpo(self, config: DPOAlignmentConfig) -> DPOSpec:
        beta = self._finite("algorithm_config.reward_scale", config.reward_scale)
        if beta <= 0:
            raise self.bad("algorithm_config.reward_scale", f"is DPO's beta and must be above 0, got {beta:g}")
        margin = self._finite("algorithm_config.gamma", config.gamma)
        smoothing = self._finite("algorithm_config.epsilon", config.epsilon)
        if not 0 <= smoothing < 0.5:
            raise self.bad(
                "algorithm_config.epsilon",
                f"is the share of pairs taken to be mislabeled (label smoothing) and must be in [0, 0.5), got {smoothing:g}",
            )
        clip = self._finite("algorithm_config.reward_clip", config.reward_clip)
        if clip < 0:
            raise self.bad(
                "algorithm_config.reward_clip",
                f"bounds the reward margin's size and must be 0 (none) or more, got {clip:g}",
            )
        return DPOSpec(beta=beta, margin=margin, label_smoothing=smoothing, clip=clip)

    def _dpo_start(self, finetuned_model: str) -> BaseModelSpec:
        if finetuned_model.startswith("file://"):
            return checkpoint_base(finetuned_model, "finetuned_model", self.roots, self.provider)
        if self.config.preference_model is None:
            raise self.bad(
                "finetuned_model",
                f"{TRAINER} starts a DPO job from a file:// checkpoint URL (inside {self.roots.describe()}), or from "
                f"the model its config's preference_model names, and provider '{self.provider}' names none",
            )
        log.info("%s: DPO job starts from preference_model %s", self.provider, self.config.preference_model)
        return model_base(self.config.preference_model, "preference_model", self.inference, self.roots, self.provider)

    # ----------------------------------------------------------------------------------- datasets
    async def _data(
        self, train: Dataset | str, validation: Dataset | str, columns_of: Callable[[Dataset, str, str], Columns]
    ) -> tuple[Columns, list[dict[str, Any]], list[dict[str, Any]]]:
        """The columns trained on (``columns_of``: SFT's or DPO's) and both datasets' rows, checked."""
        train_set = await resolve_dataset(train, self.datasets, "dataset", provider=self.provider)
        validation_set = await resolve_dataset(validation, self.datasets, "validation_dataset", provider=self.provider)
        columns = columns_of(train_set, "dataset", self.provider)
        validation_columns = columns_of(validation_set, "validation_dataset", self.provider)
        check_same_columns(columns, validation_columns, "validation_dataset", self.provider)
        train_rows, validation_rows = await self._rows(train_set, validation_set, columns)
        return columns, train_rows, validation_rows

    async def _rows(
        self, train_set: Dataset, validation_set: Dataset, columns: Columns
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        limit = self.config.max_rows
        train = await read_rows(self.reader, train_set, "dataset", max_rows=limit)
        checked = training_rows(train, columns, train_set, "dataset", self.provider)
        if validation_set == train_set:
            return checked, checked  # the same rows: read once
        validation = await read_rows(self.reader, validation_set, "validation_dataset", max_rows=limit)
        return checked, training_rows(validation, columns, validation_set, "validation_dataset", self.provider)

    # -------------------------------------------------------------------------------------- spec
    def _spec(
        self,
        job_uuid: str,
        kind: str,
        algorithm: str,
        base: BaseModelSpec,
        adapter: AdapterSpec | None,
        dpo: DPOSpec | None,
        optimizer: OptimizerSpec,
        loop: LoopSpec,
        distributed: DistributedSpec,
        columns: Columns,
    ) -> JobSpec:
        return JobSpec(
            job_uuid=job_uuid,
            kind=kind,  # type: ignore[arg-type]  # "sft" or "dpo", as the callers pass
            algorithm=algorithm,  # type: ignore[arg-type]
            base=base,
            adapter=adapter,
            dpo=dpo,
            optimizer=optimizer,
            loop=loop,
            distributed=distributed,
            data=DataSpec(format=columns.format, columns=columns.columns, validation="validation.jsonl"),  # type: ignore[arg-type]
            device=self.config.device,
            dtype=self.config.dtype,
            seed=self.config.seed,
            torch_threads=self.config.torch_threads,
        )


def _adapter_config(folder: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _adapter_shape(folder: Path) -> tuple[Literal["lora", "dora"], int, int] | None:
    """(lora or dora, rank, alpha) of a PEFT adapter folder; None when its adapter_config.json cannot be read."""
    config = _adapter_config(folder)
    if config is None:
        return None
    try:
        return ("dora" if config.get("use_dora") else "lora", int(config["r"]), int(config["lora_alpha"]))
    except (ValueError, KeyError, TypeError):
        return None
