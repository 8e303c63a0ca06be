"""inline::agents: every branch of a turn, with a model that replays a script (tests/agents_support.py).

Most tests drive the stack in-process (library mode); the HTTP tests go through the server's app with SSE.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from agents_support import AGENTS_TEST_PLUGIN, MODEL, agents_distribution
from support import ReplayPlugin, uvicorn_serving

from llama_stack.apis.agentic_system import AgenticSystemExecuteResponse, AgenticSystemTurn
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.client import LlamaStackClient
from llama_stack.plugins import discover_providers
from llama_stack.resolver import Stack
from llama_stack.server import create_app

ASK = {"role": "user", "content": "What is 2 + 3?"}
MATH_CALL = {"tool_name": "math", "arguments": {"a": 2, "b": 3}}
STOCK_TOOL = {"tool_name": "get_stock", "description": "The price of a stock.", "parameters": {"type": "object"}}


@pytest.fixture(scope="module")
def registry():
    return discover_providers(extra_plugins=[ReplayPlugin(), AGENTS_TEST_PLUGIN])


@pytest.fixture
async def client(tmp_path, registry):
    """Library mode: the distribution's stack in this process."""
    client = await LlamaStackClient.library(agents_distribution(tmp_path), registry=registry)
    yield client
    await client.aclose()


@pytest.fixture
def stack(client):
    return client.transport.stack


def model_of(stack: Stack) -> Any:
    return stack.providers["scripted"].impl


async def make_agent(client: LlamaStackClient, uuid: str = "agent-1", **fields: Any) -> str:
    body = {"uuid": uuid, "instructions": "You are a careful assistant.", "model": MODEL, **fields}
    answer = await client.agentic_system.create_agentic_system(**body)
    return answer.agent_uuid


async def run_turn(client: LlamaStackClient, agent: str, messages=(ASK,), **fields: Any) -> AgenticSystemTurn:
    answer = await client.agentic_system.execute_agentic_system(agent_uuid=agent, messages=list(messages), **fields)
    assert isinstance(answer, AgenticSystemExecuteResponse)
    return answer.turn


def kinds(turn: AgenticSystemTurn) -> list[str]:
    return [step.step_type for step in turn.steps]


def roles(request: Any) -> list[str]:
    return [m.role.value for m in [*request.dialog.message_history, request.dialog.message]]


# -- create and delete -----------------------------------------------------------------------------------------


async def test_create_refuses_what_the_distribution_cannot_run(client):
    with pytest.raises(NotFoundError, match=f"served models: .*{MODEL}") as unknown:
        await make_agent(client, model="llama3_8b_chat")
    assert unknown.value.param == "model"
    with pytest.raises(BadRequestError, match="not a chat model") as embedder:
        await make_agent(client, model="replay-embedder")
    assert embedder.value.param == "model"
    with pytest.raises(BadRequestError, match=r"not in available_tools: math") as not_available:
        await make_agent(client, executable_tools=["math"])
    assert not_available.value.param == "executable_tools"
    with pytest.raises(BadRequestError, match="no tool_runtime provider runs: get_stock"):
        await make_agent(client, available_tools=[STOCK_TOOL], executable_tools=["get_stock"])
    with pytest.raises(NotFoundError, match="No memory bank 'missing-bank'") as no_bank:
        await make_agent(client, memory_bank_uuids=["missing-bank"])
    assert no_bank.value.param == "memory_bank_uuids"
    with pytest.raises(BadRequestError, match=r"available_tools names 'get_stock' twice"):
        await make_agent(client, available_tools=[STOCK_TOOL, STOCK_TOOL])


async def test_create_names_the_api_an_agent_needs_and_the_distribution_lacks(tmp_path, registry):
    path = agents_distribution(tmp_path, apis=("inference", "agentic_system"))
    async with await LlamaStackClient.library(path, registry=registry) as client:
        for fields, field, api in (
            (
                {"available_tools": [{"tool_name": "math"}], "executable_tools": ["math"]},
                "executable_tools",
                "tool_runtime",
            ),
            ({"memory_bank_uuids": ["bank"]}, "memory_bank_uuids", "memory_banks"),
            ({"input_shields": [{"shield_type": "llama_guard"}]}, "input_shields", "safety"),
            ({"output_shields": [{"shield_type": "code_guard"}]}, "output_shields", "safety"),
        ):
            with pytest.raises(BadRequestError, match=f"does not serve the {api} API") as missing:
                await make_agent(client, **fields)
            assert missing.value.param == field
        # Custom tools need no tool runtime: the client runs them.
        assert await make_agent(client, available_tools=[STOCK_TOOL]) == "agent-1"


async def test_an_agent_is_kept_until_deleted(client):
    assert await make_agent(client, model="scripted-alias") == "agent-1"
    with pytest.raises(ConflictError, match="exists already"):
        await make_agent(client)
    await client.agentic_system.delete_agentic_system(agent_id="agent-1")
    with pytest.raises(NotFoundError, match="No agent 'agent-1'") as gone:
        await run_turn(client, "agent-1")
    assert gone.value.param == "agent_uuid"
    with pytest.raises(NotFoundError, match="No agent 'agent-1'"):
        await client.agentic_system.delete_agentic_system(agent_id="agent-1")


async def test_an_agent_created_before_a_restart_runs_a_turn_after_it(tmp_path, registry):
    path = agents_distribution(tmp_path)
    async with await LlamaStackClient.library(path, registry=registry) as before:
        await make_agent(before, model="scripted-alias")
    after_stack = Stack.from_distribution(path, registry=registry)
    async with await LlamaStackClient.library(after_stack) as after:
        model = model_of(after_stack)
        model.set_script(MODEL, [{"text": "Still here."}])
        turn = await run_turn(after, "agent-1")
    assert turn.response_message.content == "Still here."
    assert model.requests[0].model == MODEL  # the alias was stored as the model's id


# -- the loop --------------------------------------------------------------------------------------------------


async def test_a_plain_answer(client, stack):
    model_of(stack).set_script(MODEL, [{"text": "Five."}])
    agent = await make_agent(client)
    turn = await run_turn(client, agent)
    assert kinds(turn) == ["model_inference"]
    step = turn.steps[0]
    assert (step.text, step.tool_calls, step.stop_reason) == ("Five.", [], "finished_ok")
    assert step.started_at <= step.completed_at and turn.started_at <= turn.completed_at
    assert (turn.response_message.role.value, turn.response_message.content) == ("assistant", "Five.")
    assert turn.stop_reason == "end_of_turn" and turn.user_messages[0].content == ASK["content"]
    request = model_of(stack).requests[0]
    assert roles(request) == ["system", "user"]
    assert request.dialog.message_history[0].content == "You are a careful assistant."


async def test_a_built_in_tool_round_trip(client, stack):
    model_of(stack).set_script(MODEL, [{"tool_calls": [MATH_CALL]}, {"text": "2 + 3 = 5."}])
    agent = await make_agent(client, available_tools=[{"tool_name": "math"}], executable_tools=["math"])
    turn = await run_turn(client, agent)
    assert kinds(turn) == ["model_inference", "tool_execution", "model_inference"]
    call = turn.steps[0].tool_calls[0]
    assert call.call_id and (call.tool_name, call.arguments) == ("math", {"a": 2, "b": 3})
    execution = turn.steps[1]
    assert execution.tool_calls == [call] and execution.errors == []
    assert [(r.tool_name, r.content, r.call_id) for r in execution.tool_responses] == [("math", "5", call.call_id)]
    assert turn.response_message.content == "2 + 3 = 5." and turn.stop_reason == "end_of_turn"
    first, second = model_of(stack).requests
    assert [t.tool_name for t in first.available_tools] == ["math"]
    assert roles(second) == ["system", "user", "assistant", "tool"]
    assert second.dialog.message_history[-1].tool_calls == [call]
    assert second.dialog.message.tool_responses[0].call_id == call.call_id and second.dialog.message.content == "5"


@pytest.mark.parametrize(
    ("tool", "error"),
    [
        ("web_search", "web_search failed (provider 'scripted-tools'): the search service answered 503"),
        ("get_weather", "no weather station answered"),
        ("crash", "crash failed inside the server"),
        ("get_stock_price", "There is no tool named 'get_stock_price'"),
    ],
)
async def test_a_tool_that_fails_is_recorded_and_shown_to_the_model(client, stack, tool, error):
    model_of(stack).set_script(MODEL, [{"tool_calls": [{"tool_name": tool, "arguments": {}}]}, {"text": "Sorry."}])
    tools = ["web_search", "get_weather", "crash"]
    agent = await make_agent(client, available_tools=[{"tool_name": t} for t in tools], executable_tools=tools)
    turn = await run_turn(client, agent)
    assert kinds(turn) == ["model_inference", "tool_execution", "model_inference"]
    execution = turn.steps[1]
    assert [e.tool_name for e in execution.errors] == [tool]
    assert error in execution.errors[0].error and error in execution.tool_responses[0].content
    shown = model_of(stack).requests[1].dialog.message
    assert shown.role.value == "tool" and error in shown.content and "/etc/shadow" not in shown.content
    assert turn.response_message.content == "Sorry."


@pytest.mark.parametrize(("agent_limit", "config_limit", "calls"), [(3, None, 3), (None, 2, 2)])
async def test_the_iteration_limit_ends_a_turn_whose_model_keeps_calling_tools(
    tmp_path, registry, agent_limit, config_limit, calls
):
    config = {"max_iterations": config_limit} if config_limit else {}
    stack = Stack.from_distribution(agents_distribution(tmp_path, agents_config=config), registry=registry)
    async with await LlamaStackClient.library(stack) as client:
        model = model_of(stack)
        model.set_script(MODEL, [{"text": "Again.", "tool_calls": [MATH_CALL]}])
        fields = {"max_iterations": agent_limit} if agent_limit else {}
        agent = await make_agent(client, available_tools=[{"tool_name": "math"}], executable_tools=["math"], **fields)
        turn = await run_turn(client, agent)
        invocations = len(stack.providers["scripted-tools"].impl.invocations)
    assert kinds(turn) == ["model_inference", "tool_execution"] * (calls - 1) + ["model_inference"]
    assert len(model.requests) == calls and invocations == calls - 1
    assert turn.stop_reason == "max_iterations"
    assert turn.response_message.content == "Again." and turn.response_message.tool_calls == []


async def test_a_custom_tool_goes_to_the_client_and_the_turn_continues_with_its_answer(client, stack):
    model_of(stack).set_script(
        MODEL,
        [
            {"text": "Let me look.", "tool_calls": [MATH_CALL, {"tool_name": "get_stock", "arguments": {"s": "X"}}]},
            {"text": "X is at 100; 2 + 3 = 5."},
        ],
    )
    tools = [{"tool_name": "math"}, STOCK_TOOL]
    agent = await make_agent(client, available_tools=tools, executable_tools=["math"])
    first = await run_turn(client, agent)
    assert kinds(first) == ["model_inference", "tool_execution"] and first.stop_reason == "client_tool_calls"
    [pending] = first.response_message.tool_calls
    assert pending.tool_name == "get_stock" and pending.call_id
    assert len(model_of(stack).requests) == 1  # the model waits for the client

    wrong = {
        "role": "tool",
        "content": "?",
        "tool_responses": [{"tool_name": "get_stock", "content": "?", "call_id": "nope"}],
    }
    with pytest.raises(BadRequestError, match="answers no tool call") as unanswered:
        await run_turn(client, agent, messages=[wrong], turn_history=[first])
    assert unanswered.value.param == "messages[0].tool_responses[0]"

    reply = {
        "role": "tool",
        "content": "100",
        "tool_responses": [{"tool_name": "get_stock", "content": "100", "call_id": pending.call_id}],
    }
    second = await run_turn(client, agent, messages=[reply], turn_history=[first])
    assert kinds(second) == ["model_inference"] and second.stop_reason == "end_of_turn"
    assert second.response_message.content == "X is at 100; 2 + 3 = 5."
    shown = model_of(stack).requests[1]
    assert roles(shown) == ["system", "user", "assistant", "tool", "tool"]
    assert [c.tool_name for c in shown.dialog.message_history[2].tool_calls] == ["math", "get_stock"]
    assert [m.content for m in shown.dialog.message_history[3:]] + [shown.dialog.message.content] == ["5", "100"]


# -- shields ---------------------------------------------------------------------------------------------------


async def test_an_input_shield_violation_ends_the_turn_before_the_model(client, stack):
    agent = await make_agent(client, input_shields=[{"shield_type": "llama_guard", "params": {"block": "bomb"}}])
    turn = await run_turn(client, agent, messages=[{"role": "user", "content": "How do I build a bomb?"}])
    assert kinds(turn) == ["safety_filtering"] and turn.stop_reason == "shield_violation"
    step = turn.steps[0]
    assert (step.shield_type, step.stage, step.violation.details) == ("llama_guard", "input", "mentions bomb")
    assert turn.response_message.content == "I can't help with that."
    assert model_of(stack).requests == []


async def test_an_output_shield_violation_replaces_the_answer(client, stack):
    model_of(stack).set_script(MODEL, [{"text": "Paris is lovely."}])
    agent = await make_agent(
        client,
        input_shields=[{"shield_type": "prompt_guard", "params": {"block": "bomb"}}],
        output_shields=[{"shield_type": "code_guard", "params": {"block": "Paris"}}],
    )
    turn = await run_turn(client, agent)
    assert kinds(turn) == ["safety_filtering", "model_inference", "safety_filtering"]
    assert turn.steps[0].violation is None and turn.steps[2].stage == "output"
    assert turn.steps[1].text == "Paris is lovely." and turn.steps[2].violation.details == "mentions Paris"
    assert turn.response_message.content == "I can't help with that." and turn.stop_reason == "shield_violation"
    screened = stack.providers["scripted-shield"].impl.requests[-1]
    assert [m.content for m in screened.messages] == ["Paris is lovely."]


@pytest.mark.parametrize(("error", "raised"), [(503, ServiceUnavailableError), ("crash", ProviderError)])
async def test_a_shield_that_errors_stops_the_turn_closed(client, stack, error, raised):
    model_of(stack).set_script(MODEL, [{"text": "An answer nobody screened."}])
    agent = await make_agent(client, input_shields=[{"shield_type": "llama_guard", "params": {"error": error}}])
    with pytest.raises(raised, match=r"input shield llama_guard .*failed") as failed:
        await run_turn(client, agent)
    assert failed.value.provider == "scripted-shield" and "/etc/shadow" not in failed.value.message
    assert model_of(stack).requests == []
    # Streaming: the safety step starts, then the error; no model event ever comes.
    stream = await client.agentic_system.execute_agentic_system(agent_uuid=agent, messages=[ASK], stream=True)
    events = []
    with pytest.raises(raised):
        async for event in stream:
            events.append((event.event_type, event.step_type))
    assert events == [("step_start", "safety_filtering")]


async def test_an_output_shield_that_errors_withholds_the_answer(client, stack):
    model_of(stack).set_script(MODEL, [{"text": "An answer nobody screened."}])
    agent = await make_agent(client, output_shields=[{"shield_type": "llama_guard", "params": {"error": 502}}])
    with pytest.raises(ProviderError, match="output shield llama_guard \\(provider 'scripted-shield'\\) failed"):
        await run_turn(client, agent)


async def test_a_tools_own_shield_blocks_its_call(client, stack):
    model_of(stack).set_script(MODEL, [{"tool_calls": [MATH_CALL]}, {"text": "I may not add."}])
    math = {"tool_name": "math", "input_shields": [{"shield_type": "code_guard", "params": {"block": '"a": 2'}}]}
    agent = await make_agent(client, available_tools=[math], executable_tools=["math"])
    turn = await run_turn(client, agent)
    assert stack.providers["scripted-tools"].impl.invocations == []
    assert "input shield code_guard of tool math blocked the call" in turn.steps[1].errors[0].error


# -- memory ----------------------------------------------------------------------------------------------------


async def test_memory_retrieval_is_recorded_with_documents_and_scores_and_given_to_the_model(client, stack):
    documents = [
        {
            "uuid": "doc-harbour",
            "content": base64.b64encode(b"The harbour master is called Aurelia Vance.").decode(),
            "mime_type": "text/plain",
            "metadata": {"topic": "people"},
        }
    ]
    await client.memory_banks.create_memory_bank(bank_uuid="facts", bank_name="facts", documents=documents)
    model_of(stack).set_script(MODEL, [{"text": "Aurelia Vance."}])
    agent = await make_agent(client, memory_bank_uuids=["facts"])
    turn = await run_turn(client, agent, messages=[{"role": "user", "content": "Who is the harbour master?"}])
    assert kinds(turn) == ["memory_retrieval", "model_inference"]
    retrieval = turn.steps[0]
    assert retrieval.query == "Who is the harbour master?"
    assert [d.uuid for d in retrieval.documents] == ["doc-harbour"] and len(retrieval.scores) == 1
    assert isinstance(retrieval.scores[0], float)
    document = retrieval.documents[0]
    assert base64.b64decode(document.content) == b"The harbour master is called Aurelia Vance."
    assert document.metadata["bank_uuid"] == "facts" and document.metadata["topic"] == "people"
    system = model_of(stack).requests[0].dialog.message_history[0].content
    assert system.startswith("You are a careful assistant.") and "Aurelia Vance" in system
    assert turn.response_message.content == "Aurelia Vance."


# -- streaming -------------------------------------------------------------------------------------------------


def summarize(events: list[Any]) -> list[tuple[str, str, str]]:
    out = []
    for e in events:
        detail = e.response_text_delta or (e.tool_call.tool_name if e.tool_call else "")
        if e.tool_response_delta is not None:
            detail = f"-> {e.tool_response_delta.content}"
        out.append((e.event_type, e.step_type, detail))
    return out


async def test_streamed_steps_arrive_in_order_with_their_deltas(client, stack):
    model_of(stack).set_script(MODEL, [{"tool_calls": [MATH_CALL]}, {"text": "It is 5."}])
    agent = await make_agent(
        client,
        available_tools=[{"tool_name": "math"}],
        executable_tools=["math"],
        input_shields=[{"shield_type": "llama_guard"}],
    )
    stream = await client.agentic_system.execute_agentic_system(agent_uuid=agent, messages=[ASK], stream=True)
    events = [event async for event in stream]
    assert summarize(events) == [
        ("step_start", "safety_filtering", ""),
        ("step_end", "safety_filtering", ""),
        ("step_start", "model_inference", ""),
        ("step_progress", "model_inference", "math"),
        ("step_end", "model_inference", ""),
        ("step_start", "tool_execution", ""),
        ("step_progress", "tool_execution", "math"),
        ("step_progress", "tool_execution", "-> 5"),
        ("step_end", "tool_execution", ""),
        ("step_start", "model_inference", ""),
        ("step_progress", "model_inference", "It"),
        ("step_progress", "model_inference", " is"),
        ("step_progress", "model_inference", " 5."),
        ("step_end", "model_inference", ""),
    ]
    ends = [e for e in events if e.event_type == "step_end"]
    turn = events[-1].turn
    assert turn is not None and all(e.turn is None for e in events[:-1])
    assert [e.step for e in ends] == turn.steps
    assert all(e.step_uuid == s.uuid for e, s in zip(ends, turn.steps, strict=True))
    assert ends[1].stop_reason == "finished_ok" and turn.response_message.content == "It is 5."


async def test_closing_the_stream_mid_turn_stops_the_model(client, stack):
    model = model_of(stack)
    model.set_script(MODEL, [{"text": "This never ends", "stall": True}])
    agent = await make_agent(client)
    stream = await client.agentic_system.execute_agentic_system(agent_uuid=agent, messages=[ASK], stream=True)
    async for event in stream:
        if event.response_text_delta:
            break
    assert not model.stream_closed.is_set()
    await stream.aclose()
    assert model.stream_closed.is_set()


# -- over HTTP -------------------------------------------------------------------------------------------------


def sse_events(text: str) -> list[dict[str, Any]]:
    frames = [frame for frame in text.split("\n\n") if frame.strip()]
    assert all(frame.startswith("data: ") for frame in frames), frames
    return [json.loads(frame.removeprefix("data: ")) for frame in frames]


async def test_agents_over_http(stack):
    model_of(stack).set_script(MODEL, [{"tool_calls": [MATH_CALL]}, {"text": "It is 5."}])
    transport = httpx.ASGITransport(app=create_app(stack))
    async with httpx.AsyncClient(transport=transport, base_url="http://agents") as http:
        created = await http.post(
            "/agentic_system/create",
            json={
                "uuid": "web-agent",
                "instructions": "Be exact.",
                "model": MODEL,
                "available_tools": [{"tool_name": "math"}],
                "executable_tools": ["math"],
            },
        )
        assert created.status_code == 200 and created.json() == {"agent_uuid": "web-agent"}
        body = {"agent_uuid": "web-agent", "messages": [ASK]}
        answer = await http.post("/agentic_system/execute", json=body)
        assert answer.status_code == 200
        turn = answer.json()["turn"]
        assert [s["step_type"] for s in turn["steps"]] == ["model_inference", "tool_execution", "model_inference"]
        assert turn["response_message"]["content"] == "It is 5." and turn["stop_reason"] == "end_of_turn"

        model_of(stack).set_script(MODEL, [{"text": "Streamed answer."}])
        streamed = await http.post("/agentic_system/execute", json={**body, "stream": True})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = sse_events(streamed.text)
        assert [(e["event_type"], e["step_type"]) for e in events] == [
            ("step_start", "model_inference"),
            ("step_progress", "model_inference"),
            ("step_progress", "model_inference"),
            ("step_end", "model_inference"),
        ]
        assert events[-1]["turn"]["response_message"]["content"] == "Streamed answer."

        missing = await http.post("/agentic_system/execute", json={**body, "agent_uuid": "nobody", "stream": True})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "agent_uuid"
        bad = await http.post(
            "/agentic_system/execute", json={**body, "messages": [{"role": "system", "content": "x"}]}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].role"
        deleted = await http.delete("/agentic_system/delete", params={"agent_id": "web-agent"})
        assert deleted.status_code == 200
        again = await http.delete("/agentic_system/delete", params={"agent_id": "web-agent"})
        assert again.status_code == 404


async def test_a_client_that_disconnects_over_http_stops_the_turn(stack):
    model = model_of(stack)
    model.set_script(MODEL, [{"text": "This never ends", "stall": True}])
    async with uvicorn_serving(create_app(stack)) as url, httpx.AsyncClient(base_url=url) as http:
        await http.post("/agentic_system/create", json={"uuid": "a", "instructions": "", "model": MODEL})
        body = {"agent_uuid": "a", "messages": [ASK], "stream": True}
        async with http.stream("POST", "/agentic_system/execute", json=body) as response:
            async for line in response.aiter_lines():
                if "response_text_delta" in line and '"This"' in line:
                    break
        # The model stalls forever after its first word: only the disconnect can end its stream.
        await asyncio.wait_for(model.stream_closed.wait(), timeout=10)
        assert (await http.get("/health")).status_code == 200


# -- hostile input ---------------------------------------------------------------------------------------------


async def test_hostile_requests_are_refused_before_any_work(tmp_path, registry):
    config = {
        "max_messages": 2,
        "max_turn_history": 1,
        "max_tools": 2,
        "max_memory_banks": 1,
        "max_message_characters": 50,
    }
    stack = Stack.from_distribution(agents_distribution(tmp_path, agents_config=config), registry=registry)
    async with await LlamaStackClient.library(stack) as client:
        tools = [{"tool_name": f"t{i}"} for i in range(3)]
        for fields, param in (
            ({"available_tools": tools}, "available_tools"),
            ({"memory_bank_uuids": ["a", "b"]}, "memory_bank_uuids"),
            ({"uuid": "x" * 300}, "uuid"),
            ({"available_tools": [{"tool_name": "t", "parameters": {"x": "y" * 20_000}}]}, "available_tools[0]"),
        ):
            with pytest.raises(BadRequestError) as refused:
                await make_agent(client, **fields)
            assert refused.value.param == param
        model = model_of(stack)
        agent = await make_agent(client)
        turn = await run_turn(client, agent)
        for fields, param in (
            ({"messages": [ASK] * 3}, "messages"),
            ({"messages": []}, "messages"),
            ({"messages": [{"role": "user", "content": "x" * 51}]}, "messages[0]"),
            ({"messages": [{"role": "assistant", "content": "I agree."}]}, "messages[0].role"),
            ({"messages": [ASK], "turn_history": [turn, turn]}, "turn_history"),
        ):
            with pytest.raises(BadRequestError) as refused:
                await client.agentic_system.execute_agentic_system(agent_uuid=agent, **fields)
            assert refused.value.param == param
    assert len(model.requests) == 1  # only the one good turn reached the model
