"""The model a job trains: its base weights through transformers (safetensors or GGUF, never a download), and
what trains on them: a LoRA/DoRA adapter through peft (over 4-bit weights for QLoRA), or every weight."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..engine import _dtype_argument, resolve_source
from .spec import AdapterSpec, JobSpec

log = logging.getLogger(__name__)

# Where a decoder block keeps its feed-forward projections, by the names transformers' models give it.
_MLP_PARENTS = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


class ModelError(ValueError):
    """What the job asks of the model cannot be done (a module it lacks, QLoRA without CUDA)."""


@dataclass
class Trainable:
    """The model in training, its tokenizer, and how many of its parameters train."""

    model: Any
    tokenizer: Any
    pad_id: int
    adapter: bool  # a peft adapter trains (else every weight)
    parameters: int
    trainable: int


def _files(spec: JobSpec) -> tuple[Any, dict[str, Any]]:
    """Where transformers finds the base model, and the options that say how to read it (never a download)."""
    source = resolve_source(spec.base.reference)
    common: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        common["gguf_file"] = source.gguf_file
    return source, common


def load_tokenizer(spec: JobSpec) -> Any:
    from transformers import AutoTokenizer

    source, common = _files(spec)
    return AutoTokenizer.from_pretrained(source.directory, **common)


def load(spec: JobSpec, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Trainable:
    from transformers import AutoModelForCausalLM

    source, common = _files(spec)
    quantized = spec.adapter is not None and spec.adapter.kind == "qlora"
    options: dict[str, Any] = dict(common)
    if not source.gguf_file:
        options["use_safetensors"] = True  # a pickled checkpoint could run code on load
    if quantized:
        check_device(spec, device)
        options.update(_four_bit(device, dtype))
    model: Any = AutoModelForCausalLM.from_pretrained(source.directory, **options, **{_dtype_argument(): dtype})
    if source.gguf_file:
        _dequantized(model)
    if not quantized:
        model.to(device)
    checkpointing = spec.loop.activation_checkpointing
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if checkpointing:
        # Non-reentrant checkpointing works under DDP and with frozen inputs; peft's frozen embeddings still
        # need their output to require grad for the reentrant kind some models force.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.adapter is not None or spec.base.adapter is not None:
            model.enable_input_require_grads()
    model = _with_training(model, spec)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ModelError("no parameter of the model trains: the adapter covers none of its modules")
    return Trainable(model, tokenizer, int(pad or 0), spec.adapter is not None, total, trainable)


def _dequantized(model: Any) -> None:
    """transformers reads a GGUF file into plain float weights but still marks the model as GGUF-quantized,
    and refuses to save it so: the weights are what a full checkpoint saves, so the mark goes."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def check_device(spec: JobSpec, device: torch.device) -> None:
    """QLoRA's 4-bit weights need CUDA and bitsandbytes."""
    if spec.adapter is None or spec.adapter.kind != "qlora":
        return
    if device.type != "cuda":
        raise ModelError(f"qlora needs a CUDA GPU (4-bit weights through bitsandbytes); this job runs on {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("qlora needs bitsandbytes: pip install 'llama-stack-runtime[qlora]'")


def _four_bit(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def _with_training(model: Any, spec: JobSpec) -> Any:
    """The model with what trains: the starting adapter, a new adapter, or every weight."""
    from peft import PeftModel

    if spec.base.adapter is not None:
        if spec.adapter is None:  # a full fine-tune of base + adapter: fold it in, then train everything
            model = PeftModel.from_pretrained(model, spec.base.adapter, is_trainable=False).merge_and_unload()
        else:
            log.info("continuing the adapter %s (its own rank, alpha and modules apply)", spec.base.adapter)
            return PeftModel.from_pretrained(model, spec.base.adapter, is_trainable=True)
    if spec.adapter is None:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    return _new_adapter(model, spec.adapter)


def _new_adapter(model: Any, adapter: AdapterSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=target_modules(model, adapter),
        use_dora=adapter.kind == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def target_modules(model: Any, adapter: AdapterSpec) -> list[str]:
    """The module names the adapter covers, checked against what the model has."""
    linear = _linear_modules(model)
    leaves = {name.rpartition(".")[2] for name in linear}
    missing = [name for name in adapter.attn_modules if name not in leaves]
    if missing:
        raise ModelError(
            f"attention module(s) {missing} are not in this model; its linear modules are {sorted(leaves)}"
        )
    targets = list(dict.fromkeys(adapter.attn_modules))
    if adapter.mlp:
        mlp = sorted({name.rpartition(".")[2] for name in linear if _parent(name) in _MLP_PARENTS})
        if not mlp:
            raise ModelError(f"this model has no MLP projections to adapt (its linear modules: {sorted(leaves)})")
        targets += [name for name in mlp if name not in targets]
    if adapter.output:
        output = model.get_output_embeddings()
        name = next((qualified for qualified, module in model.named_modules() if module is output), None)
        if name is None:
            raise ModelError("this model has no output projection to adapt")
        targets.append(name)
    return targets


def _parent(name: str) -> str:
    """The name of a module's parent within its own parent: ``mlp`` for ``model.layers.0.mlp.up_proj``."""
    return name.rpartition(".")[0].rpartition(".")[2]


def _linear_modules(model: Any) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return [name for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, Conv1D))]
