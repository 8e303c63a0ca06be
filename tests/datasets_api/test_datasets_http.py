"""The datasets routes over HTTP through the real server (uvicorn serving the stack's app): the seed's shapes,
the list and rows extensions, and hostile requests answered 4xx with a JSON error, never a stack trace."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import serving, uvicorn_serving

from llama_stack.resolver import Stack
from llama_stack.server import create_app

ROWS = [{"prompt": f"question {i}", "score": i} for i in range(5)]
COLUMNS = {"prompt": "text", "score": "number"}


def data_url(rows: list[dict[str, Any]]) -> str:
    content = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    return "data:application/jsonl;base64," + base64.b64encode(content).decode()


def create_body(uuid: str, rows: list[dict[str, Any]] = ROWS) -> dict[str, Any]:
    return {"uuid": uuid, "dataset": {"columns": COLUMNS, "content_url": data_url(rows), "metadata": {"n": 1}}}


def write_distribution(directory: Path) -> Path:
    document = {
        "version": 1,
        "name": "datasets-http",
        "apis": ["datasets"],
        "providers": {"datasets": [{"provider_id": "datasets", "provider_type": "inline::datasets", "config": {}}]},
        "models": [],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "datasets-http.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
async def http(tmp_path):
    stack = Stack.from_distribution(write_distribution(tmp_path))
    await stack.start()
    async with uvicorn_serving(create_app(stack)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client
    await stack.shutdown()


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert "Traceback" not in response.text
    return error


async def test_the_seed_routes_and_the_extensions_answer_in_their_shapes(http):
    created = await http.post("/datasets/create", json=create_body("qa"))
    assert created.status_code == 200

    got = await http.get("/datasets/get", params={"dataset_id": "qa"})
    assert got.status_code == 200
    assert got.json() == {"columns": COLUMNS, "content_url": data_url(ROWS), "metadata": {"n": 1}}

    listed = (await http.get("/datasets/list")).json()
    assert [(d["uuid"], d["row_count"], d["dataset"]["columns"]) for d in listed] == [("qa", 5, COLUMNS)]

    page = (await http.get("/datasets/rows", params={"dataset_id": "qa", "start_index": 3, "limit": 10})).json()
    assert page == {"rows": ROWS[3:], "total": 5, "next_index": None}
    page = (await http.get("/datasets/rows", params={"dataset_id": "qa", "limit": 2})).json()
    assert page == {"rows": ROWS[:2], "total": 5, "next_index": 2}

    deleted = await http.delete("/datasets/delete", params={"dataset_id": "qa"})
    assert deleted.status_code == 200
    assert (await http.get("/datasets/list")).json() == []
    gone = await http.get("/datasets/get", params={"dataset_id": "qa"})
    assert gone.status_code == 404


async def test_a_bad_row_is_a_400_naming_row_and_column(http):
    answer = await http.post("/datasets/create", json=create_body("bad", [*ROWS[:3], {"prompt": 7, "score": 1}]))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["message"] == "dataset.content_url: row 4, column 'prompt': expected a string, got a number"
    assert error["param"] == "dataset.content_url"


async def test_conflicts_and_unknown_datasets(http):
    assert (await http.post("/datasets/create", json=create_body("one"))).status_code == 200
    again = await http.post("/datasets/create", json=create_body("one"))
    assert again.status_code == 409 and error_of(again)["code"] == "dataset_exists"
    for method, path in (("GET", "/datasets/get"), ("GET", "/datasets/rows"), ("DELETE", "/datasets/delete")):
        answer = await http.request(method, path, params={"dataset_id": "two"})
        assert answer.status_code == 404
        assert "it has 1 dataset(s): 'one'" in error_of(answer)["message"]


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs"),
    [
        ("GET", "/datasets/rows", {"params": {"dataset_id": "h", "limit": 10**12}}),
        ("GET", "/datasets/rows", {"params": {"dataset_id": "h", "limit": 0}}),
        ("GET", "/datasets/rows", {"params": {"dataset_id": "h", "start_index": -5}}),
        ("GET", "/datasets/rows", {"params": {"dataset_id": "h", "limit": "ten"}}),
        ("GET", "/datasets/rows", {"params": {}}),
        ("GET", "/datasets/get", {"params": {"dataset_id": "x" * 300}}),
        ("DELETE", "/datasets/delete", {"params": {"dataset_id": ""}}),
        ("POST", "/datasets/create", {"json": create_body("x" * 300)}),
        ("POST", "/datasets/create", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", "/datasets/create", {"json": {"uuid": "h2"}}),
        ("POST", "/datasets/create", {"json": {**create_body("h2"), "extra": 1}}),
        (
            "POST",
            "/datasets/create",
            {"json": {"uuid": "h2", "dataset": {"columns": {"a": "image"}, "content_url": data_url(ROWS)}}},
        ),
        ("POST", "/datasets/create", {"json": {"uuid": "h2", "dataset": {"columns": {}, "content_url": "ftp://x/y"}}}),
        (
            "POST",
            "/datasets/create",
            {"json": {"uuid": "h2", "dataset": {"columns": {}, "content_url": "file:///etc/passwd"}}},
        ),
        (
            "POST",
            "/datasets/create",
            {"json": {"uuid": "h2", "dataset": {"columns": {}, "content_url": "http://169.254.169.254/latest"}}},
        ),
        ("POST", "/datasets/create", {"json": {"uuid": "h2", "dataset": {"columns": {}, "content_url": "data:,"}}}),
        (
            "POST",
            "/datasets/create",
            {"json": {"uuid": "h2", "dataset": {"columns": {}, "content_url": "data:;base64,@@@"}}},
        ),
    ],
)
async def test_hostile_requests_are_answered_4xx(http, method, path, request_kwargs):
    assert (await http.post("/datasets/create", json=create_body("h"))).status_code == 200
    answer = await http.request(method, path, **request_kwargs)
    error = error_of(answer)
    assert error["message"]
    assert [d["uuid"] for d in (await http.get("/datasets/list")).json()] == ["h"]  # nothing else was created


async def test_a_lone_surrogate_in_metadata_is_a_400_not_a_server_error(http):
    body = json.dumps(create_body("s")).replace('"metadata": {"n": 1}', '"metadata": {"n": "\\ud800"}')
    assert "\\ud800" in body
    answer = await http.post("/datasets/create", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert "surrogate" in error_of(answer)["message"]
    assert error_of(answer)["param"] == "dataset.metadata.n"
    assert (await http.get("/datasets/list")).json() == []


async def test_the_routes_are_in_the_openapi_document(http):
    document = (await http.get("/openapi.json")).json()
    for path, method in (
        ("/datasets/create", "post"),
        ("/datasets/get", "get"),
        ("/datasets/delete", "delete"),
        ("/datasets/list", "get"),
        ("/datasets/rows", "get"),
    ):
        assert method in document["paths"][path]
    limit = next(p for p in document["paths"]["/datasets/rows"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


@pytest.mark.slow
def test_datasets_through_llama_stack_run_and_after_a_restart(tmp_path):
    path = write_distribution(tmp_path)
    with serving(path) as server:
        created = httpx.post(f"{server.url}/datasets/create", json=create_body("kept"), timeout=30)
        assert created.status_code == 200
    with serving(path) as server:
        page = httpx.get(f"{server.url}/datasets/rows", params={"dataset_id": "kept"}, timeout=30).json()
        assert page == {"rows": ROWS, "total": 5, "next_index": None}
