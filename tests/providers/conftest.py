"""Fixtures for provider tests: ``local_provider`` builds each local inference provider the public way."""

from __future__ import annotations

import pytest
from local_model_requests import SMOLLM2, TORCH_CUDA

from llama_stack.apis.inspect import Model
from llama_stack.apis.registry import Api
from llama_stack.plugins import ProviderContext, build_provider, discover_providers

# What the behaviour suite (test_inference_behaviour.py) runs against: test id -> (provider type, config).
# inline::torch runs in float32 and in bfloat16 on the CPU and, where torch sees a GPU, on CUDA in its
# default dtype there (bfloat16, or float16 on GPUs without it).
LOCAL_PROVIDERS: dict[str, tuple[str, dict[str, str]]] = {
    "llama-cpp": ("inline::llama-cpp", {}),
    "torch": ("inline::torch", {"device": "cpu"}),
    "torch-bfloat16": ("inline::torch", {"device": "cpu", "dtype": "bfloat16"}),
    **({"torch-cuda": ("inline::torch", {"device": "cuda"})} if TORCH_CUDA else {}),
}
BEHAVIOUR_MODEL = "smollm2"


@pytest.fixture(scope="session", params=list(LOCAL_PROVIDERS))
async def local_provider(request, tmp_path_factory):
    """A built inference provider serving SmolLM2-135M-Instruct as model ``smollm2``; loaded once per session.

    Built as a distribution builds it: discovered through the entry points, configured through its config
    class, built by its factory, and handed the model through ``register_model``.
    """
    provider_type, config = LOCAL_PROVIDERS[request.param]
    registered = discover_providers().get(Api.inference, provider_type)
    # `make test` installs both providers' extras: a missing one fails here rather than skipping.
    assert registered is not None, f"{provider_type} is not registered"
    spec = registered.spec
    provider_id = provider_type.split("::")[1]
    context = ProviderContext(provider_id=provider_id, storage_dir=tmp_path_factory.mktemp(provider_id))
    impl = await build_provider(spec, spec.config_class(**config), context)
    await impl.register_model(Model(model_id=BEHAVIOUR_MODEL, provider_id=provider_id, provider_model_id=SMOLLM2))
    yield impl
    shutdown = getattr(impl, "shutdown", None)
    if shutdown is not None:
        await shutdown()
