"""inline::torch serving fine-tuned checkpoints: LoRA and DoRA adapters attached, unmerged, to one shared base.

A tiny random Llama, two PEFT adapters over it with non-zero weights (LoRA on the attention, DoRA on q/k and
the MLP), and the folders a training job leaves (an adapter checkpoint with its checkpoint.json, a full one).
Answers are compared with PEFT's own merged model decoded greedily; the base must be loaded once whatever
the number of models over it, and requests to models sharing it must never see each other's adapter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from tiny_models import job_checkpoint, merged_greedy, save_adapter, save_merged, save_tiny_llama

from llama_stack.apis.common import StopReason
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError
from llama_stack.apis.inference import CompletionRequest, CompletionResponse
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.torch import TorchConfig

torch = pytest.importorskip("torch", reason="inline::torch needs torch")
pytest.importorskip("peft", reason="adapters need peft")

from llama_stack.providers.inline.torch import engine  # noqa: E402
from llama_stack.providers.inline.torch.provider import TorchInference, build  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "The weather in Paris today is"
TOKENS = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The base, its two adapters (plain PEFT folders), and a training job's checkpoints in a storage folder."""
    root = tmp_path_factory.mktemp("checkpoints")
    base = save_tiny_llama(root / "base")
    lora = save_adapter(base, root / "lora", dora=False, seed=1)
    dora = save_adapter(base, root / "dora", dora=True, seed=2)
    storage = root / "storage"
    return {
        "base": base,
        "lora": lora,
        "dora": dora,
        "storage": storage,
        "lora_step": job_checkpoint(storage, "job-1", 4, adapter=lora, base=base),
        "full_step": job_checkpoint(storage, "job-2", 8, full=save_merged(base, dora, root / "merged"), base=base),
    }


@pytest.fixture(scope="module")
def expected(files) -> dict[str, tuple[str, list[float]]]:
    """What PEFT's merged models answer: the reference for every served model."""
    adapters = {"base": None, "lora": files["lora"], "dora": files["dora"]}
    return {name: merged_greedy(files["base"], adapter, PROMPT, TOKENS) for name, adapter in adapters.items()}


async def new_provider(storage: Path, provider_id: str = "torch", **config: Any) -> TorchInference:
    context = ProviderContext(provider_id=provider_id, storage_dir=storage / provider_id)
    return await build(TorchConfig(device="cpu", dtype="float32", max_batch_size=4, **config), context)


def model(model_id: str, reference: Path | str, **fields: Any) -> Model:
    return Model(model_id=model_id, provider_id="torch", provider_model_id=str(reference), **fields)


async def answer(provider: TorchInference, model_id: str) -> tuple[str, list[float]]:
    response = await provider.completion(
        CompletionRequest(model=model_id, content=PROMPT, max_tokens=TOKENS, logprobs=True)
    )
    assert isinstance(response, CompletionResponse) and response.stop_reason == StopReason.max_tokens
    return response.content, [entry.logprob for entry in response.logprobs.content]


def same(got: tuple[str, list[float]], want: tuple[str, list[float]]) -> bool:
    return got[0] == want[0] and got[1] == pytest.approx(want[1], abs=1e-4)


def weights_of(folder: Path) -> list[engine.Weights]:
    """The base weights loaded in this process from ``folder``."""
    return [w for w in engine.loaded_weights() if w.source.directory == folder]


@pytest.fixture
async def provider(files):
    impl = await new_provider(files["storage"])
    yield impl
    await impl.shutdown()


async def test_adapters_over_one_base_answer_as_their_merged_models(provider, files, expected):
    await provider.register_model(model("tiny", files["base"]))
    before = await answer(provider, "tiny")
    assert same(before, expected["base"])

    # A training job's adapter checkpoint (its base from checkpoint.json), a plain PEFT folder (its base from
    # adapter_config.json), and the older form: the base with metadata.lora_adapter.
    served = await provider.register_model(model("tiny-lora", files["lora_step"]))
    assert served.context_length == provider.config.context_length
    await provider.register_model(model("tiny-dora", files["dora"]))
    await provider.register_model(model("tiny-lora-too", files["base"], metadata={"lora_adapter": str(files["lora"])}))

    (weights,) = weights_of(files["base"])  # loaded once
    assert {provider._slots[m].lm.weights for m in provider._slots} == {weights}
    assert sorted(a.kind for a in weights.adapters.values()) == ["dora", "lora", "lora"]

    answers = {m: await answer(provider, m) for m in ("tiny-lora", "tiny-dora", "tiny-lora-too", "tiny")}
    assert same(answers["tiny-lora"], expected["lora"])
    assert same(answers["tiny-lora-too"], expected["lora"])
    assert same(answers["tiny-dora"], expected["dora"])
    assert answers["tiny"] == before  # the base, bit for bit, with adapters attached beside it
    assert len({expected[name][0] for name in ("base", "lora", "dora")}) == 3  # three different answers


async def test_a_full_checkpoint_folder_loads_as_a_checkpoint(provider, files, expected):
    await provider.register_model(model("tiny-full", files["full_step"]))
    assert same(await answer(provider, "tiny-full"), expected["dora"])  # the DoRA adapter, merged and saved


async def test_concurrent_requests_on_a_shared_base_never_mix_adapters(files, expected):
    # Two providers in one process share the base weights, each with its own worker: their generations run at
    # the same time on the same modules, each with its own adapter, and must still be their own.
    first, second = await new_provider(files["storage"], "torch-a"), await new_provider(files["storage"], "torch-b")
    try:
        await first.register_model(model("base", files["base"]))
        await first.register_model(model("lora", files["lora"]))
        await second.register_model(model("dora", files["dora"]))
        assert first._slots["base"].lm.weights is second._slots["dora"].lm.weights
        jobs = [(p, name) for _ in range(3) for p, name in ((first, "base"), (second, "dora"), (first, "lora"))]
        answers = await asyncio.gather(*(answer(p, name) for p, name in jobs))
        for (_, name), got in zip(jobs, answers, strict=True):
            assert same(got, expected[name]), name
        # Streams too: each request's text is its model's.
        streams = [await p.completion(
            CompletionRequest(model=name, content=PROMPT, max_tokens=TOKENS, stream=True)
        ) for p, name in jobs]  # fmt: skip
        texts = await asyncio.gather(*(_text(stream) for stream in streams))
        assert texts == [expected[name][0] for _, name in jobs]
    finally:
        await first.shutdown()
        await second.shutdown()


async def _text(stream: Any) -> str:
    return "".join([chunk.text_delta async for chunk in stream])


async def test_unregistering_drops_the_adapter_and_last_the_base(provider, files, expected):
    await provider.register_model(model("tiny", files["base"]))
    await provider.register_model(model("tiny-lora", files["lora"]))
    await provider.register_model(model("tiny-dora", files["dora"]))
    (weights,) = weights_of(files["base"])
    await provider.unregister_model("tiny-lora")
    assert [a.kind for a in weights.adapters.values()] == ["dora"]
    with pytest.raises(NotFoundError, match=r"'tiny-lora' is not served.*'tiny', 'tiny-dora'"):
        await answer(provider, "tiny-lora")
    assert same(await answer(provider, "tiny"), expected["base"])
    assert same(await answer(provider, "tiny-dora"), expected["dora"])
    # Registered again, it is attached again.
    await provider.register_model(model("tiny-lora", files["lora"]))
    assert same(await answer(provider, "tiny-lora"), expected["lora"])
    for model_id in ("tiny-lora", "tiny-dora"):
        await provider.unregister_model(model_id)
    assert weights.adapters == {}
    assert same(await answer(provider, "tiny"), expected["base"])
    del weights
    await provider.unregister_model("tiny")  # the last model over the base: the base goes
    assert weights_of(files["base"]) == [] and provider._bases == {}
    with pytest.raises(NotFoundError, match="its models: none"):
        await provider.unregister_model("tiny")


async def test_unregistering_stops_the_models_requests(provider, files, expected):
    await provider.register_model(model("tiny", files["base"], context_length=4096))
    await provider.register_model(model("tiny-lora", files["lora"], context_length=4096))
    running = await provider.completion(CompletionRequest(model="tiny-lora", content=PROMPT, max_tokens=0, stream=True))
    await running.__anext__()  # generating now (until its 4096-token window is full, were it left alone)
    waiting = asyncio.create_task(answer(provider, "tiny-lora"))
    base_waiting = asyncio.create_task(answer(provider, "tiny"))
    worker = provider._slots["tiny"].worker  # the base's: both models queue on it
    deadline = asyncio.get_running_loop().time() + 30
    while len(worker.jobs) < 3:  # the stream running, both requests queued behind it
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    await asyncio.wait_for(provider.unregister_model("tiny-lora"), 30)
    with pytest.raises(NotFoundError, match="'tiny-lora' was unregistered"):
        async for _ in running:
            pass
    with pytest.raises(NotFoundError, match="'tiny-lora' was unregistered"):
        await waiting
    assert same(await base_waiting, expected["base"])  # the base's own request is served as usual


async def test_registering_twice_and_conflicts(provider, files):
    first = await provider.register_model(model("tiny-lora", files["lora"]))
    assert await provider.register_model(model("tiny-lora", files["lora"])) == first  # the same: nothing changes
    with pytest.raises(ConflictError, match="already registered with adapter"):
        await provider.register_model(model("tiny-lora", files["dora"]))
    with pytest.raises(BadRequestError, match=r"adapter folder already; metadata.lora_adapter"):
        await provider.register_model(model("x", files["lora"], metadata={"lora_adapter": str(files["dora"])}))
    with pytest.raises(BadRequestError, match=r"metadata.base_model is for adapters"):
        await provider.register_model(model("x", files["base"], metadata={"base_model": str(files["base"])}))


async def test_an_adapters_base_named_by_metadata(provider, files, expected, tmp_path):
    # A PEFT folder that does not say its base (as an adapter copied from elsewhere): metadata.base_model names
    # it, as a reference or as a model the provider serves.
    bare = shutil.copytree(files["lora"], tmp_path / "bare")
    config = json.loads((bare / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (bare / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(BadRequestError, match=r"does not say which weights.*set metadata.base_model"):
        await provider.register_model(model("bare", bare))
    await provider.register_model(model("tiny", files["base"]))
    await provider.register_model(model("bare", bare, metadata={"base_model": "tiny"}))
    await provider.register_model(model("bare-too", bare, metadata={"base_model": str(files["base"])}))
    assert same(await answer(provider, "bare"), expected["lora"])
    assert len(weights_of(files["base"])) == 1


async def test_base_weights_saved_beside_an_adapter_never_reach_the_shared_base(provider, files, expected, tmp_path):
    # An adapter of the output layer, whose weights are tied to the embeddings: PEFT saves the embeddings beside
    # it. Here they are not the base's (as after training in another dtype): the served base must not take them,
    # and the adapter must answer as it does over the base it was trained on.
    from safetensors.torch import load_file, save_file

    clean = save_adapter(files["base"], tmp_path / "output", dora=False, seed=5, targets=["q_proj", "lm_head"])
    altered = shutil.copytree(clean, tmp_path / "altered")
    tensors = load_file(altered / "adapter_model.safetensors")
    (saved_base,) = [key for key in tensors if "lora_" not in key]
    tensors[saved_base] = tensors[saved_base] * 3
    save_file(tensors, altered / "adapter_model.safetensors")
    await provider.register_model(model("tiny", files["base"]))
    await provider.register_model(model("tiny-output", altered))
    # PEFT's own forward with the clean adapter (not merged: merging into a layer tied to the embeddings would
    # change the embeddings too).
    reference = merged_greedy(files["base"], clean, PROMPT, TOKENS, merge=False)
    assert same(await answer(provider, "tiny-output"), reference) and reference != expected["base"]
    assert same(await answer(provider, "tiny"), expected["base"])


# -- what a client may register (register_client_model) ---------------------------------------------------


async def test_a_client_registers_checkpoints_inside_the_roots_only(provider, files, expected, tmp_path):
    # Default roots: every jobs folder of the storage folder, where the training job wrote its checkpoints.
    assert provider.checkpoint_roots() == [(files["storage"] / "torch-training" / "jobs").resolve()]
    with pytest.raises(BadRequestError, match=r"checkpoint\.json base\.reference .* outside the checkpoint roots"):
        await provider.register_client_model(model("ft", files["lora_step"]))  # its base is nowhere a client may name
    await provider.register_model(model("tiny", files["base"]))  # the distribution's (trusted): served, so named
    await provider.register_client_model(model("ft", files["lora_step"]))
    assert same(await answer(provider, "ft"), expected["lora"])
    await provider.register_client_model(model("ft-full", files["full_step"]))

    outside = [
        (model("x", files["lora"]), "provider_model_id"),  # a folder elsewhere
        (model("x", "/etc"), "provider_model_id"),
        (model("x", files["storage"] / "torch-training" / "jobs" / ".." / ".." / ".." / "lora"), "provider_model_id"),
        (model("x", files["base"], metadata={"lora_adapter": str(files["dora"])}), "metadata"),
    ]
    link = files["storage"] / "torch-training" / "jobs" / "link"
    link.symlink_to(files["dora"], target_is_directory=True)  # inside by name, outside once resolved
    outside.append((model("x", link), "provider_model_id"))
    for request, field in outside:
        with pytest.raises(BadRequestError, match="outside the checkpoint roots of provider 'torch'") as error:
            await provider.register_client_model(request)
        assert error.value.param == field
    link.unlink()
    with pytest.raises(BadRequestError, match="'checkpoints/step-4' must be an absolute path"):
        await provider.register_client_model(model("x", "checkpoints/step-4"))
    # What the provider already serves may be named from anywhere.
    await provider.register_client_model(
        model("tiny-again", files["base"], metadata={"lora_adapter": str(files["lora_step"])})
    )
    assert same(await answer(provider, "tiny-again"), expected["lora"])


async def test_a_client_checkpoint_whose_base_lies_outside_is_refused(provider, files, tmp_path):
    jobs = files["storage"] / "torch-training" / "jobs"
    step = job_checkpoint(files["storage"], "job-elsewhere", 1, adapter=files["lora"], base=tmp_path / "secret-base")
    with pytest.raises(
        BadRequestError, match=r"checkpoint\.json base\.reference .*secret-base.* outside the checkpoint roots"
    ):
        await provider.register_client_model(model("x", step))
    shutil.rmtree(jobs / "job-elsewhere")


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda f: (f / "adapter_model.safetensors").rename(f / "adapter_model.bin"), "no adapter_model.safetensors"),
        (lambda f: (f / "adapter_config.json").write_text("{not json"), "adapter_config.json .* cannot be read"),
        (lambda f: (f / "adapter_config.json").write_text("[1, 2]"), "is not a JSON object"),
        (lambda f: _edit_config(f, peft_type="PROMPT_TUNING"), "peft_type 'PROMPT_TUNING' is not served"),
        (lambda f: _edit_config(f, target_modules=["no_such_module"]), "does not fit LlamaForCausalLM"),
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"not safetensors"), "weights cannot be read"),
        (lambda f: (f / "checkpoint.json").write_text('{"kind": "adapter"}'), r"checkpoint\.json of .* is malformed"),
    ],
    ids=[
        "pickle-only",
        "config-not-json",
        "config-not-object",
        "not-lora",
        "no-such-module",
        "bad-weights",
        "bad-info",
    ],
)
async def test_malformed_adapter_folders_are_400s(provider, files, expected, break_it, message):
    broken = files["storage"] / "torch-training" / "jobs" / "broken"
    shutil.copytree(files["lora_step"], broken)
    try:
        break_it(broken)
        await provider.register_model(model("tiny", files["base"]))
        with pytest.raises(BadRequestError, match=message) as error:
            await provider.register_client_model(model("broken", broken))
        assert "model 'broken'" in error.value.message
        assert same(await answer(provider, "tiny"), expected["base"])  # the base is as it was
        assert weights_of(files["base"])[0].adapters == {}
    finally:
        shutil.rmtree(broken)


async def test_an_adapter_of_another_shape_is_refused_and_leaves_the_base_whole(provider, files, expected, tmp_path):
    wider = save_tiny_llama(tmp_path / "wider", seed=3, hidden_size=96)
    wrong = save_adapter(wider, tmp_path / "wrong", dora=False, seed=4)
    await provider.register_model(model("tiny", files["base"]))
    with pytest.raises(BadRequestError, match=r"does not fit LlamaForCausalLM.*size mismatch"):
        await provider.register_model(model("wrong", wrong, metadata={"base_model": "tiny"}))
    assert same(await answer(provider, "tiny"), expected["base"])
    await provider.register_model(model("tiny-lora", files["lora"]))  # a good adapter still attaches
    assert same(await answer(provider, "tiny-lora"), expected["lora"])


async def test_a_full_checkpoint_with_pickled_weights_only_is_refused_to_clients(provider, files, tmp_path):
    pickled = files["storage"] / "torch-training" / "jobs" / "pickled"
    shutil.copytree(files["full_step"], pickled)
    try:
        for weights in pickled.glob("*.safetensors"):
            weights.rename(weights.with_suffix(".bin"))
        with pytest.raises(BadRequestError, match=r"holds no .safetensors weights"):
            await provider.register_client_model(model("pickled", pickled))
    finally:
        shutil.rmtree(pickled)


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.fixture(autouse=True)
def _no_stray_roots(files):
    """Each test starts with the storage folder holding only the training job's checkpoints."""
    jobs = files["storage"] / "torch-training" / "jobs"
    yield
    assert sorted(os.listdir(jobs)) == ["job-1", "job-2"]
