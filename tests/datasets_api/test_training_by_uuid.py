"""Post-training at Together and Emissary with a dataset named by the uuid it was created under (the vendors'
fakes stand in for them): the dataset's bytes are what gets uploaded; an unknown uuid is a 404 naming the
datasets that exist, before anything reaches the vendor; without the datasets API a uuid is a 400."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import emissary_training, together_fine_tunes
from fakes.emissary import API_KEY as EMISSARY_KEY
from fakes.together import API_KEY as TOGETHER_KEY
from fakes.together_fine_tunes import LLAMA_8B
from remote.training_support import TrainingProvider, inline_dataset, jsonl, training_config, training_request

from llama_stack.apis.errors import BadRequestError, NotFoundError

TOGETHER = TrainingProvider("together", "remote::together", "together-ft", TOGETHER_KEY, together_fine_tunes.reset)
EMISSARY = TrainingProvider("emissary", "remote::emissary", "emissary-ft", EMISSARY_KEY, emissary_training.reset)

DIALOG_ROWS = [
    {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]},
    {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
]
PROMPT_ROWS = [{"prompt": "What is 1 + 1?", "completion": "2"}, {"prompt": "Capital?", "completion": "Paris"}]
OPTIMIZER = {"optimizer_type": "adamw", "lr": 1e-4, "lr_min": 1e-5, "weight_decay": 0.01}
LORA = {"lora_attn_modules": ["q_proj", "v_proj"], "apply_lora_to_mlp": False, "apply_lora_to_output": False}
DATASETS = [{"provider_id": "datasets", "provider_type": "inline::datasets", "config": {}}]


def sft(job_uuid: str, model: str, dataset: Any, validation: Any, batch_size: int) -> dict[str, Any]:
    fields = {
        "model": model,
        "dataset": dataset,
        "validation_dataset": validation,
        "algorithm": "lora",
        "algorithm_config": {**LORA, "rank": 8, "alpha": 16},
        "optimizer_config": OPTIMIZER,
        "training_config": training_config(batch_size=batch_size),
    }
    return training_request(job_uuid, fields, {})


async def stack_with_datasets(start_stack: Any, provider: TrainingProvider, fake: Any) -> Any:
    provider.reset(fake)
    return await start_stack({**provider.providers(fake), "datasets": DATASETS})


async def test_together_uploads_the_dataset_a_uuid_names(together, start_stack):
    client = await stack_with_datasets(start_stack, TOGETHER, together)
    train = inline_dataset(jsonl(DIALOG_ROWS), {"messages": "dialog"})
    await client.datasets.create_dataset(uuid="chat-train", dataset=train)

    await client.post_training.supervised_fine_tune(**sft("by-uuid", LLAMA_8B, "chat-train", train, batch_size=8))

    uploads = [r.form["file"] for r in together.calls("POST", "/v1/files/upload")]
    assert uploads[0] == ("by-uuid-train.jsonl", jsonl(DIALOG_ROWS))
    (body,) = [r.json for r in together.calls("POST", "/v1/fine-tunes")]
    assert together_fine_tunes.file_content(together, body["training_file"]) == jsonl(DIALOG_ROWS)


async def test_emissary_uploads_the_datasets_uuids_name(emissary, start_stack):
    client = await stack_with_datasets(start_stack, EMISSARY, emissary)
    columns = {"prompt": "text", "completion": "text"}
    await client.datasets.create_dataset(uuid="train", dataset=inline_dataset(jsonl(PROMPT_ROWS), columns))
    await client.datasets.create_dataset(uuid="test", dataset=inline_dataset(jsonl(PROMPT_ROWS[:1]), columns))

    await client.post_training.supervised_fine_tune(
        **sft("e-uuid", "Llama-3.2-1B-Instruct", "train", "test", batch_size=2)
    )

    train, test = emissary.calls("POST", r"/v1/projects/[^/]+/datasets")[:2]
    assert train.form["file"] == ("e-uuid-train.jsonl", jsonl(PROMPT_ROWS))
    assert test.form["file"] == ("e-uuid-validation.jsonl", jsonl(PROMPT_ROWS[:1]))


@pytest.mark.parametrize("vendor", ["together", "emissary"])
async def test_an_unknown_uuid_is_a_404_before_the_vendor_is_called(vendor, request, start_stack):
    provider, model, batch = {
        "together": (TOGETHER, LLAMA_8B, 8),
        "emissary": (EMISSARY, "Llama-3.2-1B-Instruct", 2),
    }[vendor]
    fake = request.getfixturevalue(vendor)
    client = await stack_with_datasets(start_stack, provider, fake)
    await client.datasets.create_dataset(uuid="exists", dataset=inline_dataset(jsonl(PROMPT_ROWS), {"prompt": "text"}))

    with pytest.raises(NotFoundError) as caught:
        await client.post_training.supervised_fine_tune(**sft("lost", model, "exists", "typo", batch_size=batch))
    assert caught.value.message == (
        "validation_dataset: no dataset 'typo' was created with /datasets/create (datasets: 'exists')"
    )
    assert caught.value.param == "validation_dataset"
    assert not fake.calls("POST", r".*")  # nothing uploaded, nothing created


async def test_a_uuid_without_the_datasets_api_is_a_400(together, start_stack):
    TOGETHER.reset(together)
    client = await start_stack(TOGETHER.providers(together))
    inline = inline_dataset(jsonl(DIALOG_ROWS), {"messages": "dialog"})
    with pytest.raises(BadRequestError, match="does not serve the datasets API") as caught:
        await client.post_training.supervised_fine_tune(**sft("no-api", LLAMA_8B, "chat-train", inline, batch_size=8))
    assert caught.value.param == "dataset"
