"""inline::datasets in a stack (library mode): create, get, list, rows and delete; what is refused and how;
datasets kept across a restart; a file that changes after creation; resolve_dataset against the real API."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_stack.apis.datasets import Dataset, DatasetRows
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError, ValidationError
from llama_stack.apis.registry import Api
from llama_stack.client import LlamaStackClient
from llama_stack.providers.utils.datasets import resolve_dataset, resolve_training_datasets
from llama_stack.resolver import Stack

DIALOG_ROWS = [
    {"dialog": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
    for i in range(7)
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def inline(rows: list[dict[str, Any]], columns: dict[str, str] | None = None) -> dict[str, Any]:
    url = "data:application/jsonl;base64," + base64.b64encode(jsonl(rows)).decode()
    return {"columns": columns or {"dialog": "dialog"}, "content_url": url, "metadata": {"source": "test"}}


def write_distribution(directory: Path, **config: Any) -> Path:
    data = directory / "data"
    data.mkdir(exist_ok=True)
    document = {
        "version": 1,
        "name": "datasets-test",
        "apis": ["datasets"],
        "providers": {
            "datasets": [
                {
                    "provider_id": "datasets",
                    "provider_type": "inline::datasets",
                    "config": {"file_roots": [str(data)], **config},
                }
            ]
        },
        "models": [],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "datasets-test.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
async def client(tmp_path):
    client = await LlamaStackClient.library(write_distribution(tmp_path))
    yield client
    await client.aclose()


@pytest.fixture
def data(tmp_path) -> Path:
    return tmp_path / "data"


# ------------------------------------------------------------------------------------------ the routes
async def test_a_created_dataset_is_got_listed_paged_and_deleted(client):
    await client.datasets.create_dataset(uuid="math", dataset=inline(DIALOG_ROWS))

    got = await client.datasets.get_dataset(dataset_id="math")
    assert got == Dataset(**inline(DIALOG_ROWS))
    (listed,) = await client.datasets.list_datasets()
    assert (listed.uuid, listed.dataset, listed.row_count) == ("math", got, 7)
    assert listed.created_at is not None

    first = await client.datasets.get_dataset_rows(dataset_id="math", limit=3)
    assert first == DatasetRows(rows=DIALOG_ROWS[:3], total=7, next_index=3)
    second = await client.datasets.get_dataset_rows(dataset_id="math", start_index=first.next_index, limit=3)
    assert second == DatasetRows(rows=DIALOG_ROWS[3:6], total=7, next_index=6)
    last = await client.datasets.get_dataset_rows(dataset_id="math", start_index=6, limit=3)
    assert last == DatasetRows(rows=DIALOG_ROWS[6:], total=7, next_index=None)
    past = await client.datasets.get_dataset_rows(dataset_id="math", start_index=100)
    assert past == DatasetRows(rows=[], total=7, next_index=None)
    everything = await client.datasets.get_dataset_rows(dataset_id="math")  # default limit 100
    assert everything.rows == DIALOG_ROWS and everything.next_index is None

    await client.datasets.delete_dataset(dataset_id="math")
    assert await client.datasets.list_datasets() == []
    with pytest.raises(NotFoundError):
        await client.datasets.get_dataset(dataset_id="math")


async def test_a_bad_dataset_is_a_400_at_creation_and_is_not_kept(client):
    rows = [*DIALOG_ROWS[:2], {"dialog": "just a string"}]
    with pytest.raises(BadRequestError) as caught:
        await client.datasets.create_dataset(uuid="bad", dataset=inline(rows))
    assert caught.value.message == (
        "dataset.content_url: row 3, column 'dialog': expected a list of messages ({role, content}), got a string"
    )
    assert caught.value.param == "dataset.content_url"
    assert await client.datasets.list_datasets() == []
    await client.datasets.create_dataset(uuid="bad", dataset=inline(DIALOG_ROWS))  # the uuid is still free


async def test_a_uuid_is_used_once(client):
    await client.datasets.create_dataset(uuid="once", dataset=inline(DIALOG_ROWS))
    with pytest.raises(ConflictError, match="a dataset 'once' exists already on provider 'datasets'") as caught:
        await client.datasets.create_dataset(uuid="once", dataset=inline(DIALOG_ROWS[:1]))
    assert caught.value.status == 409
    assert (await client.datasets.get_dataset_rows(dataset_id="once")).total == 7  # the first one is kept


async def test_unknown_datasets_are_404_naming_those_that_exist(client):
    with pytest.raises(NotFoundError, match="no dataset 'nope' on provider 'datasets': it has no datasets yet"):
        await client.datasets.get_dataset(dataset_id="nope")
    for uuid in ("alpha", "beta"):
        await client.datasets.create_dataset(uuid=uuid, dataset=inline(DIALOG_ROWS))
    expected = "no dataset 'nope' on provider 'datasets'; it has 2 dataset(s): 'alpha', 'beta'"
    for call in (
        client.datasets.get_dataset(dataset_id="nope"),
        client.datasets.delete_dataset(dataset_id="nope"),
        client.datasets.get_dataset_rows(dataset_id="nope"),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert caught.value.message == expected and caught.value.param == "dataset_id"


async def test_rows_bounds_and_uuid_lengths_are_checked(client):
    await client.datasets.create_dataset(uuid="d", dataset=inline(DIALOG_ROWS))
    for bad in ({"limit": 0}, {"limit": 1001}, {"start_index": -1}):
        with pytest.raises(ValidationError):
            await client.datasets.get_dataset_rows(dataset_id="d", **bad)
    with pytest.raises(ValidationError):
        await client.datasets.create_dataset(uuid="u" * 257, dataset=inline(DIALOG_ROWS))
    with pytest.raises(ValidationError):
        await client.datasets.create_dataset(uuid="", dataset=inline(DIALOG_ROWS))
    assert (await client.datasets.get_dataset_rows(dataset_id="d", limit=1000)).total == 7


async def test_a_uuid_is_free_text_never_a_file_name(client, tmp_path):
    uuid = "../../escape/dataset?.jsonl"
    await client.datasets.create_dataset(uuid=uuid, dataset=inline(DIALOG_ROWS))
    assert (await client.datasets.get_dataset_rows(dataset_id=uuid, limit=1)).rows == DIALOG_ROWS[:1]
    made = {p.name for p in tmp_path.rglob("*")}
    assert "escape" not in made and not any(name.endswith("?.jsonl") for name in made)


async def test_a_row_limit_in_the_config_refuses_larger_datasets(tmp_path):
    client = await LlamaStackClient.library(write_distribution(tmp_path, max_rows=5))
    try:
        with pytest.raises(BadRequestError, match="holds more than 5 rows"):
            await client.datasets.create_dataset(uuid="big", dataset=inline(DIALOG_ROWS))
    finally:
        await client.aclose()


# --------------------------------------------------------------------------------------- files, restarts
async def test_datasets_survive_a_restart_on_the_same_storage(tmp_path, data):
    path = write_distribution(tmp_path)
    (data / "train.csv").write_text("prompt,score\nhello,1\nworld,2.5\n")
    dataset = {"columns": {"prompt": "text", "score": "number"}, "content_url": (data / "train.csv").as_uri()}
    first = await LlamaStackClient.library(path)
    await first.datasets.create_dataset(uuid="csv", dataset=dataset)
    await first.datasets.create_dataset(uuid="dialogs", dataset=inline(DIALOG_ROWS))
    await first.aclose()

    again = await LlamaStackClient.library(Stack.from_distribution(path))
    try:
        assert [(d.uuid, d.row_count) for d in await again.datasets.list_datasets()] == [("csv", 2), ("dialogs", 7)]
        rows = await again.datasets.get_dataset_rows(dataset_id="csv")
        assert rows.rows == [{"prompt": "hello", "score": 1}, {"prompt": "world", "score": 2.5}]
        with pytest.raises(ConflictError):
            await again.datasets.create_dataset(uuid="dialogs", dataset=inline(DIALOG_ROWS))
    finally:
        await again.aclose()


async def test_a_file_that_changed_since_creation_is_checked_again(client, data):
    path = data / "train.jsonl"
    path.write_bytes(jsonl(DIALOG_ROWS[:2]))
    await client.datasets.create_dataset(
        uuid="f", dataset={"columns": {"dialog": "dialog"}, "content_url": path.as_uri()}
    )
    assert (await client.datasets.get_dataset_rows(dataset_id="f")).total == 2

    path.write_bytes(jsonl(DIALOG_ROWS))  # grown, still good
    assert (await client.datasets.get_dataset_rows(dataset_id="f")).rows == DIALOG_ROWS
    assert [d.row_count for d in await client.datasets.list_datasets()] == [7]

    path.write_bytes(jsonl([*DIALOG_ROWS[:3], {"dialog": [{"role": "user", "content": 5}]}]))
    with pytest.raises(ConflictError) as caught:
        await client.datasets.get_dataset_rows(dataset_id="f")
    assert caught.value.message.startswith("dataset 'f' can no longer be read as created: dataset.content_url: row 4")
    assert "column 'dialog'" in caught.value.message

    path.unlink()
    with pytest.raises(ConflictError, match=r"can no longer be read as created: .*does not exist"):
        await client.datasets.get_dataset_rows(dataset_id="f")
    assert (await client.datasets.get_dataset(dataset_id="f")).content_url == path.as_uri()  # still registered


async def test_a_file_outside_the_roots_is_refused_at_creation(client, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(jsonl(DIALOG_ROWS))
    with pytest.raises(BadRequestError, match="is outside the folders datasets may come from"):
        await client.datasets.create_dataset(
            uuid="o", dataset={"columns": {"dialog": "dialog"}, "content_url": outside.as_uri()}
        )


# ------------------------------------------------------------------------------------------ resolve_dataset
async def test_resolve_dataset_takes_an_inline_dataset_or_the_uuid_of_a_created_one(client):
    api = client.transport.stack.impl(Api.datasets)  # what a provider gets in context.deps
    inline_dataset = Dataset(**inline(DIALOG_ROWS))
    assert await resolve_dataset(inline_dataset, None, "dataset") is inline_dataset
    await client.datasets.create_dataset(uuid="train", dataset=inline(DIALOG_ROWS))
    assert await resolve_dataset("train", api, "dataset") == inline_dataset

    with pytest.raises(NotFoundError) as caught:
        await resolve_dataset("missing", api, "validation_dataset", provider="trainer")
    assert caught.value.message == (
        "validation_dataset: no dataset 'missing' was created with /datasets/create (datasets: 'train')"
    )
    assert (caught.value.param, caught.value.provider) == ("validation_dataset", "trainer")

    with pytest.raises(BadRequestError, match="does not serve the datasets API") as refused:
        await resolve_dataset("train", None, "dataset")
    assert refused.value.param == "dataset"

    train, validation = await resolve_training_datasets("train", inline_dataset, api)
    assert train == validation == inline_dataset
