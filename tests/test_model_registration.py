"""Models registered while the stack runs: POST /models/register and DELETE /models/unregister.

A fine-tuned checkpoint (a tiny Llama's LoRA adapter, in the folder a training job writes) is registered as a
model of inline::torch beside its base, in library mode and over HTTP through `llama-stack run`, answers as PEFT's
merged model does, survives a restart, and goes when unregistered. The 4xx cases: an unknown provider, one
that takes no models at run time, names already taken, a model the YAML declares, fields out of bounds, and
checkpoints outside the provider's roots. A remote provider (a test-only replay one) takes models as they are.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ReplayConfig, ReplayPlugin, serving
from tiny_models import job_checkpoint, merged_greedy, save_adapter, save_tiny_llama

from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ProviderError,
    ValidationError,
)
from llama_stack.client import LlamaStackClient
from llama_stack.plugins import ProviderSpec, discover_providers, hookimpl

pytest.importorskip("torch", reason="inline::torch needs torch")
pytest.importorskip("peft", reason="adapters need peft")

pytestmark = pytest.mark.slow

PROMPT = "The weather in Paris today is"
TOKENS = 6


class RemoteReplayPlugin:
    """The replay provider as a remote one: it only names models, so a client may register any."""

    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(
            ProviderSpec(
                api="inference",
                provider_type="remote::replay",
                config_class=ReplayConfig,
                factory="support:build_replay",
                description="Test-only: replays a fixed reply, as a remote provider.",
            )
        )


@pytest.fixture(scope="module")
def registry():
    return discover_providers(extra_plugins=[ReplayPlugin(), RemoteReplayPlugin()])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tuned")
    base = save_tiny_llama(root / "base")
    lora = save_adapter(base, root / "lora", dora=False, seed=1)
    return {"root": root, "base": base, "lora": lora}


@pytest.fixture(scope="module")
def expected(files) -> dict[str, str]:
    return {
        "base": merged_greedy(files["base"], None, PROMPT, TOKENS)[0],
        "lora": merged_greedy(files["base"], files["lora"], PROMPT, TOKENS)[0],
    }


def distribution(folder: Path, files: dict[str, Path], replay: bool = True) -> tuple[Path, Path]:
    """A distribution serving the tiny base and (a YAML entry naming a checkpoint folder) a training job's
    adapter over it; its storage folder holds that job. Returns the YAML and the checkpoint folder."""
    storage = folder / "state"
    step = job_checkpoint(storage, "job-1", 4, adapter=files["lora"], base=files["base"])
    replays = (
        """
    - {provider_id: replay, provider_type: inline::replay, config: {}}
    - {provider_id: remote-replay, provider_type: remote::replay, config: {}}"""
        if replay
        else ""
    )
    yaml = folder / "tuned.yaml"
    yaml.write_text(
        f"""
name: tuned
apis: [inference]
providers:
  inference:
    - provider_id: torch
      provider_type: inline::torch
      config: {{device: cpu, dtype: float32}}{replays}
models:
  - {{model_id: tiny, provider_id: torch, provider_model_id: "{files["base"]}", context_length: 256}}
  - model_id: tiny-step
    provider_id: torch
    provider_model_id: "{step}"
storage:
  dir: "{storage}"
"""
    )
    return yaml, step


async def complete(client: LlamaStackClient, model: str) -> str:
    answer = await client.inference.completion(model=model, content=PROMPT, max_tokens=TOKENS)
    return answer.content


async def test_a_checkpoint_registered_in_library_mode(tmp_path, files, expected, registry):
    yaml, step = distribution(tmp_path, files)
    client = await LlamaStackClient.library(yaml, registry=registry)
    try:
        assert await complete(client, "tiny-step") == expected["lora"]  # the YAML entry naming the checkpoint
        served = await client.register_model(
            model_id="ft", provider_id="torch", provider_model_id=str(step), aliases=["ft-alias"]
        )
        assert served.context_length == 2048  # filled in by the provider: its default window
        assert await complete(client, "ft-alias") == expected["lora"]
        listed = {m.model_id: m for m in await client.list_models()}
        assert listed["ft"] == served and set(listed) == {"tiny", "tiny-step", "ft"}
        assert (await client.health()).models["ft"] == "ready"
        # Chat answers too (the base's tokenizer and chat template).
        chat = await client.inference.chat_completion(
            model="ft", dialog={"message": {"role": "user", "content": "Hi"}}, max_tokens=3
        )
        assert chat.usage.completion_tokens == 3

        await client.unregister_model(model_id="ft")
        with pytest.raises(NotFoundError, match="'ft' is not served by this distribution"):
            await complete(client, "ft")
        with pytest.raises(NotFoundError):
            await complete(client, "ft-alias")
        assert {m.model_id for m in await client.list_models()} == {"tiny", "tiny-step"}
        assert await complete(client, "tiny") == expected["base"]
        assert await complete(client, "tiny-step") == expected["lora"]
        # The name is free again.
        await client.register_model(model_id="ft", provider_id="torch", provider_model_id=str(step))
        assert await complete(client, "ft") == expected["lora"]
    finally:
        await client.aclose()


async def test_what_cannot_be_registered(tmp_path, files, registry):
    yaml, step = distribution(tmp_path, files)
    client = await LlamaStackClient.library(yaml, registry=registry)
    register = client.register_model
    try:
        with pytest.raises(NotFoundError, match=r"No inference provider 'nope'.*'remote-replay', 'replay', 'torch'"):
            await register(model_id="x", provider_id="nope")
        with pytest.raises(BadRequestError, match=r"'replay' \(inline::replay.*no register_client_model") as error:
            await register(model_id="x", provider_id="replay")
        assert error.value.param == "provider_id"
        with pytest.raises(ConflictError, match="'tiny' is taken: it is model 'tiny'"):
            await register(model_id="tiny", provider_id="torch", provider_model_id=str(step))
        with pytest.raises(ConflictError, match="'tiny-step' is taken") as error:
            await register(model_id="x", provider_id="torch", provider_model_id=str(step), aliases=["tiny-step"])
        assert error.value.param == "aliases"
        with pytest.raises(BadRequestError, match="named twice"):
            await register(model_id="x", provider_id="torch", provider_model_id=str(step), aliases=["x"])
        with pytest.raises(BadRequestError, match="outside the checkpoint roots of provider 'torch'"):
            await register(model_id="x", provider_id="torch", provider_model_id=str(files["lora"]))
        with pytest.raises(BadRequestError, match="outside the checkpoint roots"):
            await register(model_id="x", provider_id="torch", provider_model_id="/etc/passwd")
        # Bounds, checked before anything else.
        with pytest.raises(ValidationError, match="model_id") as error:
            await register(model_id="x" * 300, provider_id="torch")
        assert error.value.details[0]["loc"] == "model_id"
        with pytest.raises(ValidationError) as error:
            await register(model_id="x", provider_id="torch", aliases=[f"a{i}" for i in range(40)])
        assert error.value.details[0]["loc"] == "aliases"
        with pytest.raises(ValidationError) as error:
            await register(model_id="bad\nname", provider_id="torch")
        assert error.value.details[0]["loc"] == "model_id"
        with pytest.raises(BadRequestError, match=r"metadata is .* bytes of JSON") as error:
            await register(model_id="x", provider_id="remote-replay", metadata={"blob": "y" * 70_000})
        assert error.value.param == "metadata"
        # Unregistering what was not registered at run time.
        with pytest.raises(BadRequestError, match=r"'tiny' is declared in the distribution .*tuned\.yaml"):
            await client.unregister_model(model_id="tiny")
        with pytest.raises(NotFoundError, match=r"No model 'ghost' registered at run time \(registered: none\)"):
            await client.unregister_model(model_id="ghost")
        # Two registrations of one name at once: the second meets the first in progress.
        both = await asyncio.gather(
            register(model_id="ft", provider_id="torch", provider_model_id=str(step), aliases=["ft-alias"]),
            register(model_id="ft-alias", provider_id="remote-replay"),
            return_exceptions=True,
        )
        assert both[0].model_id == "ft"
        assert isinstance(both[1], ConflictError) and "'ft-alias' is being registered now" in both[1].message
        with pytest.raises(NotFoundError, match="'ft-alias' is an alias of model 'ft'"):
            await client.unregister_model(model_id="ft-alias")
        assert {m.model_id for m in await client.list_models()} == {"tiny", "tiny-step", "ft"}
    finally:
        await client.aclose()


async def test_a_remote_provider_takes_models_as_they_are(tmp_path, files, registry):
    yaml, _ = distribution(tmp_path, files)
    client = await LlamaStackClient.library(yaml, registry=registry)
    try:
        served = await client.register_model(model_id="vendor-model", provider_id="remote-replay", context_length=8192)
        assert served.context_length == 8192
        answer = await client.inference.chat_completion(
            model="vendor-model", dialog={"message": {"role": "user", "content": "Hi"}}
        )
        assert answer.content == "The capital of France is Paris."
        await client.unregister_model(model_id="vendor-model")  # the provider has no unregister_model: unrouted
        with pytest.raises(NotFoundError, match="'vendor-model' is not served"):
            await client.inference.chat_completion(
                model="vendor-model", dialog={"message": {"role": "user", "content": "Hi"}}
            )
    finally:
        await client.aclose()


async def test_registered_models_survive_a_restart_or_say_why_not(tmp_path, files, expected, registry):
    yaml, _ = distribution(tmp_path, files)
    step = job_checkpoint(tmp_path / "state", "job-2", 8, adapter=files["lora"], base=files["base"])
    client = await LlamaStackClient.library(yaml, registry=registry)
    await client.register_model(model_id="ft", provider_id="torch", provider_model_id=str(step), aliases=["ft2"])
    await client.register_model(model_id="gone", provider_id="remote-replay")
    await client.unregister_model(model_id="gone")
    await client.aclose()

    client = await LlamaStackClient.library(yaml, registry=registry)
    try:
        assert [m.model_id for m in await client.list_models()] == ["tiny", "tiny-step", "ft"]
        assert await complete(client, "ft2") == expected["lora"]
        assert (await client.health()).errors is None
    finally:
        await client.aclose()

    moved = shutil.move(step, tmp_path / "moved")  # the checkpoint is gone when the server starts next
    client = await LlamaStackClient.library(yaml, registry=registry)
    try:
        health = await client.health()
        assert health.models == {"tiny": "ready", "tiny-step": "ready", "ft": "failed"}
        assert list(health.errors) == ["ft"] and f"{str(step)!r} does not exist" in health.errors["ft"]
        assert "ft" in {m.model_id for m in await client.list_models()}
        with pytest.raises(
            ProviderError, match=r"Model 'ft' \(registered at run time\) could not be loaded again.*does not exist"
        ):
            await complete(client, "ft2")
        await client.unregister_model(model_id="ft")
        health = await client.health()
        assert "ft" not in health.models and health.errors is None
    finally:
        await client.aclose()
    shutil.move(moved, step)
    client = await LlamaStackClient.library(yaml, registry=registry)  # unregistered for good
    try:
        assert [m.model_id for m in await client.list_models()] == ["tiny", "tiny-step"]
    finally:
        await client.aclose()


# -- over HTTP, through `llama-stack run` ------------------------------------------------------------------------


async def _complete_over_http(http: httpx.AsyncClient, model: str) -> str:
    response = await http.post("/inference/completion", json={"model": model, "content": PROMPT, "max_tokens": TOKENS})
    assert response.status_code == 200, response.text
    return response.json()["content"]


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


async def test_registering_over_http_and_after_a_restart(tmp_path, files, expected):
    yaml, step = distribution(tmp_path, files, replay=False)
    register = {"model_id": "ft", "provider_id": "torch", "provider_model_id": str(step), "aliases": ["ft-alias"]}
    with serving(yaml) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            answer = await http.post("/models/register", json=register)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {**register, "model_type": "llm", "context_length": 2048, "metadata": {}}
            assert "ft" in {m["model_id"] for m in (await http.get("/models/list")).json()}
            assert (await http.get("/health")).json()["models"]["ft"] == "ready"
            # Requests to the base, the YAML's adapter and the registered one, all at once: each its own answer.
            models = ["tiny", "ft", "tiny-step", "ft-alias"] * 2
            answers = await asyncio.gather(*(_complete_over_http(http, m) for m in models))
            assert answers == [expected["base" if m == "tiny" else "lora"] for m in models]

            assert "'ft' is taken" in _error(await http.post("/models/register", json=register), 409)
            other = {**register, "model_id": "x", "aliases": []}
            assert "inference providers: 'torch'" in _error(
                await http.post("/models/register", json={**other, "provider_id": "nope"}), 404
            )
            assert "outside the checkpoint roots" in _error(
                await http.post("/models/register", json={**other, "provider_model_id": "/etc"}),
                400,
            )
            assert "model_id" in _error(await http.post("/models/register", json={**other, "model_id": "x" * 257}), 422)
            assert "declared in the distribution" in _error(await http.delete("/models/unregister?model_id=tiny"), 400)
            assert "registered: 'ft'" in _error(await http.delete("/models/unregister?model_id=ghost"), 404)

    with serving(yaml) as server:  # the same storage folder: ft is registered again at start
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            assert await _complete_over_http(http, "ft-alias") == expected["lora"]
            gone = await http.delete("/models/unregister", params={"model_id": "ft"})
            assert gone.status_code == 200 and gone.content == b""
            assert [m["model_id"] for m in (await http.get("/models/list")).json()] == ["tiny", "tiny-step"]
            assert "'ft' is not served" in _error(
                await http.post("/inference/completion", json={"model": "ft", "content": "x"}), 404
            )
