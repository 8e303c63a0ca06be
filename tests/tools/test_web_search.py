"""remote::web-search: the web_search tool on Brave Search and on Tavily, served through the stack against
local fakes of both APIs (tests/fakes/search.py), over HTTP and in-process."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fakes.search import BRAVE_KEY, TAVILY_KEY, make_brave_fake, make_tavily_fake
from fakes.vendor_server import FakeVendor, Fault

from llama_stack.apis.errors import (
    BadRequestError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
)
from llama_stack.client import LlamaStackClient
from llama_stack.request_context import PROVIDER_DATA_HEADER
from llama_stack.resolver import Stack
from llama_stack.server import create_app

FAST = {"max_retries": 1, "retry_backoff": 0.001, "timeout": 5.0}
KEYS = {"brave": BRAVE_KEY, "tavily": TAVILY_KEY}
PATHS = {"brave": ("GET", "/web/search"), "tavily": ("POST", "/search")}


# ------------------------------------------------------------------------------------------ fixtures
def _checked(fake: FakeVendor) -> Iterator[FakeVendor]:
    fake.reset()
    fake.state.pop("raw_answer", None)
    yield fake
    violations = list(fake.violations)
    fake.reset()
    fake.state.pop("raw_answer", None)
    assert not violations, f"requests to the fake {fake.name} broke its API:\n" + "\n".join(violations)


@pytest.fixture(scope="module")
def brave_server() -> Iterator[FakeVendor]:
    fake = make_brave_fake().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def tavily_server() -> Iterator[FakeVendor]:
    fake = make_tavily_fake().start()
    yield fake
    fake.stop()


@pytest.fixture(params=["brave", "tavily"])
def vendor(request: pytest.FixtureRequest, brave_server: FakeVendor, tavily_server: FakeVendor) -> Iterator[FakeVendor]:
    yield from _checked(brave_server if request.param == "brave" else tavily_server)


def search_provider(fake: FakeVendor, **config: Any) -> dict[str, Any]:
    settings = {"engine": fake.name, "url": fake.url, "api_key": KEYS[fake.name], **FAST, **config}
    return {"provider_id": "search", "provider_type": "remote::web-search", "config": settings}


def write_distribution(directory: Path, providers: list[dict[str, Any]], name: str) -> Path:
    path = directory / f"{name}.yaml"
    document = {
        "version": 1,
        "name": name,
        "apis": ["tool_runtime"],
        "providers": {"tool_runtime": providers},
        "storage": {"dir": str(directory / "state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
async def start_stack(tmp_path: Path) -> AsyncIterator[Any]:
    """``await start_stack(providers)`` -> a started Stack, shut down after the test."""
    stacks: list[Stack] = []

    async def start(providers: list[dict[str, Any]]) -> Stack:
        stack = Stack.from_distribution(write_distribution(tmp_path, providers, f"search-{len(stacks)}"))
        await stack.start()
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        await stack.shutdown()


async def tools_of(stack: Stack, provider_data: dict[str, Any] | None = None) -> Any:
    return (await LlamaStackClient.library(stack, provider_data=provider_data)).tool_runtime


def search_calls(fake: FakeVendor) -> list[Any]:
    method, path = PATHS[fake.name]
    return fake.calls(method, f"{fake.base_path}{path}")


# ----------------------------------------------------------------------------------------- behaviour
async def test_list_tools_publishes_web_search_with_its_bounds(vendor, start_stack):
    tools = await tools_of(await start_stack([search_provider(vendor, max_results=7)]))
    [tool] = await tools.list_tools()
    assert tool.tool_name.value == "web_search"
    assert {"Brave Search": "brave", "Tavily": "tavily"}[tool.description.split("(")[1].split(")")[0]] == vendor.name
    properties = tool.parameters["properties"]
    assert tool.parameters["required"] == ["query"]
    assert properties["count"]["maximum"] == 7
    assert properties["query"]["maxLength"] == 400


async def test_a_search_answers_title_url_and_snippet_per_hit_and_the_raw_hits(vendor, start_stack):
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    result = await tools.invoke_tool(tool_name="web_search", arguments={"query": "llama"})
    assert result.error is None
    lines = result.content.splitlines()
    assert lines[0].startswith('Web results for "llama"') and lines[0].endswith(", 2):")
    # Brave's HTML (<strong> marks, &amp;) is plain text for the model.
    assert lines[2:5] == [
        "1. Llama Stack documentation",
        "   https://llama-stack.example/docs",
        "   Llama Stack serves inference, agents, memory and safety APIs behind one server.",
    ]
    assert "2. Llamas & alpacas" in lines and "   https://animals.example/llama" in lines
    assert "<strong>" not in result.content
    assert result.metadata["engine"] == vendor.name and result.metadata["query"] == "llama"
    assert [hit["url"] for hit in result.metadata["hits"]] == [
        "https://llama-stack.example/docs",
        "https://animals.example/llama",
    ]
    [sent] = search_calls(vendor)
    if vendor.name == "brave":
        assert sent.query == {"q": "llama", "count": "5"}
        assert sent.headers["x-subscription-token"] == BRAVE_KEY
    else:
        assert sent.json == {"query": "llama", "max_results": 5}
        assert sent.headers["authorization"] == f"Bearer {TAVILY_KEY}"


async def test_count_asks_the_vendor_for_that_many_and_no_more_come_back(vendor, start_stack):
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    result = await tools.invoke_tool(tool_name="web_search", arguments={"query": "many results", "count": 3})
    assert len(result.metadata["hits"]) == 3
    assert [line for line in result.content.splitlines() if line[:2] in ("1.", "2.", "3.", "4.")] == [
        "1. Result page 1",
        "2. Result page 2",
        "3. Result page 3",
    ]


async def test_no_hits_is_said_plainly(vendor, start_stack):
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    result = await tools.invoke_tool(tool_name="web_search", arguments={"query": "zebra quantum"})
    assert result.content == 'No web results for "zebra quantum".'
    assert result.metadata["hits"] == []


async def test_long_snippets_are_cut_to_snippet_chars(vendor, start_stack):
    tools = await tools_of(await start_stack([search_provider(vendor, snippet_chars=50)]))
    result = await tools.invoke_tool(tool_name="web_search", arguments={"query": "camelid"})
    snippet = result.content.splitlines()[4].strip()
    assert len(snippet) == 50 and snippet.endswith("…")
    assert snippet.startswith("The llama is a domesticated South American")


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({}, "arguments.query"),
        ({"query": ""}, "arguments.query"),
        ({"query": "   "}, "arguments.query"),
        ({"query": "x" * 401}, "arguments.query"),
        ({"query": "llama", "count": 0}, "arguments.count"),
        ({"query": "llama", "count": 11}, "arguments.count"),
        ({"query": "llama", "site": "example.com"}, "arguments.site"),
    ],
)
async def test_bad_arguments_are_400_naming_the_field_and_nothing_is_sent(vendor, start_stack, arguments, param):
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    with pytest.raises(BadRequestError) as caught:
        await tools.invoke_tool(tool_name="web_search", arguments=arguments)
    assert caught.value.param == param
    assert search_calls(vendor) == []


async def test_another_tool_is_404_naming_this_one(vendor, start_stack):
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    with pytest.raises(NotFoundError) as caught:
        await tools.invoke_tool(tool_name="image_gen", arguments={"query": "a cat"})
    assert "web_search" in caught.value.message


# --------------------------------------------------------------------------------------------- failures
async def test_a_refused_configured_key_is_502_naming_the_provider_without_the_key(vendor, start_stack, caplog):
    caplog.set_level(logging.DEBUG)
    vendor.echo_headers_in_errors = True  # the vendor quotes the key back, as a careless one would
    stack = await start_stack([search_provider(vendor, api_key="wrong-configured-key-123")])
    with pytest.raises(ProviderError) as caught:
        await (await tools_of(stack)).invoke_tool(tool_name="web_search", arguments={"query": "llama"})
    error = caught.value
    assert error.status == 502 and error.code == "provider_auth_failed" and error.provider == "search"
    assert "provider 'search'" in error.message and "rejected its configured API key (401" in error.message
    assert "wrong-configured-key-123" not in json.dumps(error.to_body())
    assert "wrong-configured-key-123" not in caplog.text


async def test_a_key_sent_with_the_request_is_used_and_a_refused_one_is_401_over_http(
    vendor, start_stack, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv(f"{vendor.name.upper()}_API_KEY", raising=False)
    vendor.echo_headers_in_errors = True
    # No key in the config: the caller brings it in the provider-data header.
    stack = await start_stack([search_provider(vendor, api_key=None)])
    key_field = f"{vendor.name}_api_key"
    body = {"tool_name": "web_search", "arguments": {"query": "llama"}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(stack)), base_url="http://t") as http:
        good = await http.post(
            "/tool_runtime/invoke",
            json=body,
            headers={PROVIDER_DATA_HEADER: json.dumps({key_field: KEYS[vendor.name]})},
        )
        bad = await http.post(
            "/tool_runtime/invoke", json=body, headers={PROVIDER_DATA_HEADER: json.dumps({key_field: "sk-wrong-9876"})}
        )
        missing = await http.post("/tool_runtime/invoke", json=body)
    assert good.status_code == 200 and "Llama Stack documentation" in good.json()["content"]
    assert bad.status_code == 401
    error = bad.json()["error"]
    assert error["provider"] == "search" and "rejected the API key sent with the request" in error["message"]
    assert "sk-wrong-9876" not in bad.text and "sk-wrong-9876" not in caplog.text
    assert KEYS[vendor.name] not in caplog.text
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert key_field in missing.json()["error"]["message"]


async def test_a_vendor_that_does_not_answer_in_time_is_504(vendor, start_stack):
    vendor.fail(*PATHS[vendor.name], Fault("hang"))
    tools = await tools_of(await start_stack([search_provider(vendor, timeout=0.3)]))
    with pytest.raises(ProviderTimeoutError) as caught:
        await tools.invoke_tool(tool_name="web_search", arguments={"query": "llama"})
    assert caught.value.status == 504 and "provider 'search'" in caught.value.message


async def test_rate_limiting_is_retried_then_503(vendor, start_stack):
    vendor.fail(*PATHS[vendor.name], Fault("status", status=429), times=1)
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    result = await tools.invoke_tool(tool_name="web_search", arguments={"query": "llama"})
    assert "Llama Stack documentation" in result.content and len(search_calls(vendor)) == 2
    vendor.fail(*PATHS[vendor.name], Fault("status", status=429), times=2)
    with pytest.raises(ServiceUnavailableError):
        await tools.invoke_tool(tool_name="web_search", arguments={"query": "llama"})


@pytest.mark.parametrize(
    "answer",
    [
        b"[1, 2, 3]",
        b'{"web": {"results": "none"}, "results": "none"}',
        b'{"web": {"type": "search", "results": [{"title": "no url"}]}, "results": [{"title": "no url"}]}',
        b'{"web": {"type": "search", "results": [42]}, "results": [42]}',
    ],
)
async def test_an_answer_of_the_wrong_shape_is_502(vendor, start_stack, answer):
    vendor.state["raw_answer"] = answer
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    with pytest.raises(ProviderError) as caught:
        await tools.invoke_tool(tool_name="web_search", arguments={"query": "llama"})
    assert caught.value.status == 502
    assert "answered the search in an unexpected shape" in caught.value.message


async def test_invalid_json_is_502(vendor, start_stack):
    vendor.fail(*PATHS[vendor.name], Fault("invalid_json"))
    tools = await tools_of(await start_stack([search_provider(vendor)]))
    with pytest.raises(ProviderError) as caught:
        await tools.invoke_tool(tool_name="web_search", arguments={"query": "llama"})
    assert caught.value.status == 502 and "invalid JSON" in caught.value.message


def test_the_engine_picks_the_vendors_url_unless_one_is_given():
    from llama_stack.providers.remote.web_search.config import WebSearchConfig

    assert WebSearchConfig().url == "https://api.search.brave.com/res/v1"
    assert WebSearchConfig(engine="tavily").url == "https://api.tavily.com"
    assert WebSearchConfig(engine="tavily", url="http://proxy:8080").url == "http://proxy:8080"
    with pytest.raises(ValueError, match="default_results"):
        WebSearchConfig(default_results=8, max_results=4)


async def test_math_and_web_search_in_one_distribution_are_routed_by_tool_name(brave_server, start_stack):
    for fake in _checked(brave_server):
        math = {"provider_id": "math", "provider_type": "inline::math", "config": {}}
        tools = await tools_of(await start_stack([search_provider(fake), math]))
        assert sorted(tool.tool_name.value for tool in await tools.list_tools()) == ["math", "web_search"]
        searched = await tools.invoke_tool(tool_name="web_search", arguments={"query": "stack"})
        computed = await tools.invoke_tool(tool_name="math", arguments={"expression": "sqrt(8)", "mode": "exact"})
        assert "Stack (abstract data type)" in searched.content and computed.content == "2*sqrt(2)"
        with pytest.raises(NotFoundError) as caught:
            await tools.invoke_tool(tool_name="image_gen", arguments={"query": "a cat"})
        assert "math" in caught.value.message and "web_search" in caught.value.message
