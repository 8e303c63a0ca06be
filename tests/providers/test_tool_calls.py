"""Tool calling without a model: prompt rendering, and parsing fixed model outputs in each format."""

from __future__ import annotations

import datetime
import json
import re

import pytest

from llama_stack.apis.common import Dialog, StopReason, ToolCall, ToolDefinition
from llama_stack.apis.inference import TokenLogprob, Usage
from llama_stack.providers.utils.inference.attachments import InlinedAttachments
from llama_stack.providers.utils.inference.structured import check_json, json_schema_for
from llama_stack.providers.utils.inference.tool_calls.formats import (
    ToolFormat,
    offered_tools,
    tool_call_schema,
    tool_format_for,
)
from llama_stack.providers.utils.inference.tool_calls.parse import parse_tool_calls
from llama_stack.providers.utils.inference.tool_calls.render import (
    JSON_TOOL_PROMPT,
    NAMED_TOOL_PROMPT,
    REQUIRED_TOOL_PROMPT,
    TOOL_RESULTS_PROMPT,
    render_messages,
)
from llama_stack.providers.utils.inference.tool_calls.stream import ToolCallStream

LLAMA3 = ToolFormat.llama3
JSON = ToolFormat.json

WEATHER = ToolDefinition(
    tool_name="get_weather",
    description="Get the current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ADD = ToolDefinition(
    tool_name="add",
    description="Add two numbers",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
)
SEARCH = ToolDefinition(tool_name="web_search")
MATH = ToolDefinition(tool_name="math")
CODE = ToolDefinition(tool_name="code_interpreter")
TOOLS = [WEATHER, ADD, SEARCH, MATH, CODE]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
)


def call(name: str, **arguments) -> tuple[str, dict]:
    """An expected call: its tool and arguments (ids are random, checked by ``named``)."""
    return name, arguments


def named(calls: list[ToolCall]) -> list[tuple[str, dict]]:
    """Parsed calls as (tool, arguments), after checking that each has an id of its own."""
    ids = [c.call_id for c in calls]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    return [(c.tool_name, c.arguments) for c in calls]


def parsed(output: str, fmt: ToolFormat, tools: list[ToolDefinition]) -> tuple[str, list[tuple[str, dict]]]:
    text, calls = parse_tool_calls(output, fmt, tools)
    return text, named(calls)


# -- which format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "template", "expected"),
    [
        ("anything", LLAMA3_TEMPLATE, LLAMA3),
        ("anything", "<|start_header_id|>x<|end_header_id|> <|python_tag|>", LLAMA3),
        ("Llama-3.1-8B", CHATML_TEMPLATE, JSON),  # the template decides when there is one
        ("smollm2", CHATML_TEMPLATE, JSON),
        ("Meta-Llama-3.1-8B-Instruct", None, LLAMA3),
        ("llama3.2:1b", None, LLAMA3),
        ("smollm2", None, JSON),
        ("llama-2-7b", None, JSON),
    ],
)
def test_tool_format_for(name, template, expected):
    assert tool_format_for(name, template) == expected


# -- parsing fixed model outputs ----------------------------------------------------------------------------

JSON_CASES = [
    # (model output, expected text, expected calls)
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "", [call("get_weather", city="Paris")]),
    ('  {"name":"get_weather","arguments":{"city":"Paris"}}\n', "", [call("get_weather", city="Paris")]),
    (
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n'
        '{"name": "web_search", "arguments": {"query": "news"}}',
        "",
        [call("get_weather", city="Paris"), call("add", a=2, b=3), call("web_search", query="news")],
    ),
    (
        'Let me check that.\n{"name": "get_weather", "arguments": {"city": "Rome"}}',
        "Let me check that.",
        [call("get_weather", city="Rome")],
    ),
    ('Calling {"name": "add", "arguments": {"a": 1, "b": 1}} now.', "Calling now.", [call("add", a=1, b=1)]),
    ('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [call("get_weather", city="Oslo")]),
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}', "", [call("get_weather", city="Oslo")]),
    ('{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}', "", [call("add", a=1, b=2)]),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n```', "", [call("get_weather", city="Lima")]),
    (
        '<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Nice"}}]</tool_call>',
        "",
        [call("add", a=1, b=2), call("get_weather", city="Nice")],
    ),
    (
        '[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Nice"}}]',
        "",
        [call("add", a=1, b=2), call("get_weather", city="Nice")],
    ),
    ('{"name": "get_weather", "arguments": {}}', "", [call("get_weather")]),
    # Not calls: they come back as text, unchanged.
    ("The capital of France is Paris.", "The capital of France is Paris.", []),
    ('{"name": "send_email", "arguments": {"to": "x"}}', '{"name": "send_email", "arguments": {"to": "x"}}', []),
    (
        '{"name": "get_weather", "arguments": {"city": "Paris"',
        '{"name": "get_weather", "arguments": {"city": "Paris"',
        [],
    ),
    (
        '{"name": "get_weather", "arguments": {"city": Paris}}',
        '{"name": "get_weather", "arguments": {"city": Paris}}',
        [],
    ),
    ('{"name": "get_weather", "arguments": ["Paris"]}', '{"name": "get_weather", "arguments": ["Paris"]}', []),
    ('{"name": "get_weather", "arguments": "not json"}', '{"name": "get_weather", "arguments": "not json"}', []),
    ('{"answer": "Paris", "confidence": 1}', '{"answer": "Paris", "confidence": 1}', []),
    (
        '{"name": "get_weather", "arguments": {}, "extra": 1}',
        '{"name": "get_weather", "arguments": {}, "extra": 1}',
        [],
    ),
    ('Use a dict like {a: 1} or {"b": 2}.', 'Use a dict like {a: 1} or {"b": 2}.', []),
    ("```python\nprint({'a': 1})\n```", "```python\nprint({'a': 1})\n```", []),
    ("[1, 2, 3] are numbers\n[link](http://x)", "[1, 2, 3] are numbers\n[link](http://x)", []),
    ("<b>bold</b> <tool_call>{broken</tool_call>", "<b>bold</b> <tool_call>{broken</tool_call>", []),
    ('{"name": "add", "arguments": {"a": 1}} {"name": "nope"}', ' {"name": "nope"}', [call("add", a=1)]),
    ('<|python_tag|>brave_search.call(query="x")', '<|python_tag|>brave_search.call(query="x")', []),
]

LLAMA3_CASES = [
    ('<|python_tag|>brave_search.call(query="weather in Paris")', "", [call("web_search", query="weather in Paris")]),
    ("<|python_tag|>wolfram_alpha.call(query='2+2')", "", [call("math", query="2+2")]),
    (
        '<|python_tag|>brave_search.call(query="a")\nwolfram_alpha.call(query="b")',
        "",
        [call("web_search", query="a"), call("math", query="b")],
    ),
    (
        "<|python_tag|>import math\nprint(math.sqrt(2))",
        "",
        [call("code_interpreter", code="import math\nprint(math.sqrt(2))")],
    ),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [call("get_weather", city="Paris")]),
    (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 1, "b": 2}}',
        "",
        [call("get_weather", city="Paris"), call("add", a=1, b=2)],
    ),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [call("get_weather", city="Paris")]),
    (
        'I will search.<|python_tag|>brave_search.call(query="x")<|eom_id|>',
        "I will search.",
        [call("web_search", query="x")],
    ),
    ("Paris is the capital.", "Paris is the capital.", []),
    ('{"name": "delete_all", "parameters": {}}', '{"name": "delete_all", "parameters": {}}', []),
]


@pytest.mark.parametrize(("output", "text", "calls"), JSON_CASES)
def test_parse_json_format(output, text, calls):
    assert parsed(output, JSON, TOOLS) == (text, calls)


@pytest.mark.parametrize(("output", "text", "calls"), LLAMA3_CASES)
def test_parse_llama3_format(output, text, calls):
    assert parsed(output, LLAMA3, TOOLS) == (text, calls)


def test_llama3_broken_or_unknown_python_tag_calls_come_back_as_text():
    without_code = [WEATHER, SEARCH]  # no code_interpreter: code after the tag is not a call
    for body in [
        'brave_search.call(query="x"',
        "photogen.call(query='cat')",
        "print(1)",
        'brave_search.call("positional")',
    ]:
        assert parse_tool_calls("<|python_tag|>" + body, LLAMA3, without_code) == (body, [])
    assert parse_tool_calls("<|python_tag|>", LLAMA3, without_code) == ("", [])


def test_nothing_is_parsed_without_tools():
    output = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert parse_tool_calls(output, JSON, []) == (output, [])
    assert offered_tools(TOOLS, "none") == []
    assert offered_tools(TOOLS, "required") == TOOLS


@pytest.mark.parametrize("output", ["", "   ", "{", "[", "```", "<", "<|python_tag|", '{"', "\\", '"}', "}]{["])
def test_fragments_never_raise(output):
    for fmt in ToolFormat:
        text, calls = parse_tool_calls(output, fmt, TOOLS)
        assert calls == [] and text == output


# -- streaming ------------------------------------------------------------------------------------------


def stream_pieces(fmt, output, size, tools=TOOLS, stop=StopReason.finished_ok):
    stream = ToolCallStream(fmt, tools)
    chunks = []
    for start in range(0, len(output), size):
        chunks += stream.feed(output[start : start + size])
    chunks += stream.finish(stop)
    return chunks


@pytest.mark.parametrize(("fmt", "case"), [(JSON, c) for c in JSON_CASES] + [(LLAMA3, c) for c in LLAMA3_CASES])
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_streaming_agrees_with_parsing(fmt, case, size):
    output, text, calls = case
    chunks = stream_pieces(fmt, output, size)
    *body, last = chunks
    assert last.stop_reason == StopReason.finished_ok and last.text_delta == "" and last.tool_call is None
    assert all(c.stop_reason is None for c in body)
    assert "".join(c.text_delta for c in chunks) == text
    tool_chunks = [c for c in chunks if c.tool_call is not None]
    assert named([c.tool_call for c in tool_chunks]) == calls
    assert [c.tool_call_index for c in tool_chunks] == list(range(len(calls)))
    assert all(c.text_delta == "" for c in tool_chunks)
    assert all(c.text_delta for c in body if c.tool_call is None and c.logprobs is None)


def test_every_call_gets_an_id_of_its_own_across_answers():
    output = '{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    _, first = parse_tool_calls(output, JSON, TOOLS)
    _, second = parse_tool_calls(output, JSON, TOOLS)  # the next turn: the same calls again
    assert named(first + second) == [call("get_weather", city="Paris")] * 4  # named() checks the ids are distinct
    stream = ToolCallStream(JSON, TOOLS)
    chunks = [*stream.feed(output), *stream.finish(StopReason.finished_ok)]
    streamed = [c.tool_call for c in chunks if c.tool_call is not None]
    assert streamed == stream.calls  # what a stream sends is what its final answer holds, ids included
    assert not {c.call_id for c in streamed} & {c.call_id for c in first + second}


def test_results_answering_generated_ids_render_back():
    _, calls = parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Paris"}}', JSON, [WEATHER])
    d = dialog(
        SYSTEM,
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        message={
            "role": "user",
            "content": "",
            "tool_responses": [{"tool_name": "get_weather", "content": "22C", "call_id": calls[0].call_id}],
        },
    )
    messages = render(d, [WEATHER])
    assert messages[2]["content"] == '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert messages[3]["content"].startswith(f"Tool result (get_weather, call {calls[0].call_id}): 22C")


def test_plain_text_streams_through_at_once():
    stream = ToolCallStream(JSON, TOOLS)
    assert [c.text_delta for c in stream.feed("The capital")] == ["The capital"]
    assert [c.text_delta for c in stream.feed(" is Paris.")] == [" is Paris."]
    # A possible call start is held back, and released as text once it is known not to be one.
    assert stream.feed("\n{") == []
    assert stream.feed('"answer"') == []
    assert [c.text_delta for c in stream.feed(": 1}")] == ['\n{"answer": 1}']
    assert stream.feed("  ") == []  # trailing whitespace waits: it is dropped if a call follows
    assert [c.text_delta for c in stream.feed("ok")] == ["  ok"]


def test_text_before_a_call_is_sent_before_the_call_is_complete():
    stream = ToolCallStream(JSON, TOOLS)
    assert [c.text_delta for c in stream.feed("Checking.\n")] == ["Checking."]
    assert stream.feed('{"name": "get_weather", "arguments": {"city":') == []
    (chunk,) = stream.feed(' "Paris"}}')
    assert named([chunk.tool_call]) == [call("get_weather", city="Paris")] and chunk.tool_call_index == 0
    (last,) = stream.finish(StopReason.finished_ok, usage=Usage(prompt_tokens=3, completion_tokens=4))
    assert last.stop_reason == StopReason.finished_ok and last.usage.completion_tokens == 4


def test_logprobs_of_held_back_text_travel_with_the_next_chunk():
    stream = ToolCallStream(JSON, TOOLS)
    lp = [TokenLogprob(token=t, logprob=-0.5) for t in ('{"name"', ': "add", "arguments": {"a": 1, "b": 2}}')]
    assert stream.feed('{"name"', [lp[0]]) == []
    (chunk,) = stream.feed(': "add", "arguments": {"a": 1, "b": 2}}', [lp[1]])
    assert chunk.tool_call.tool_name == "add" and chunk.logprobs.content == lp
    assert stream.finish(StopReason.finished_ok)[-1].logprobs is None
    # Without tools, chunks carry their own logprobs.
    plain = ToolCallStream(JSON, [])
    (chunk,) = plain.feed("Hi", [TokenLogprob(token="Hi", logprob=-1.0)])
    assert chunk.text_delta == "Hi" and chunk.logprobs.content[0].token == "Hi"


def test_a_stream_cut_short_in_a_call_gives_the_text_back():
    chunks = stream_pieces(JSON, '{"name": "get_weather", "arguments": {"ci', 4, stop=StopReason.max_tokens)
    assert chunks[-1].stop_reason == StopReason.max_tokens
    assert "".join(c.text_delta for c in chunks) == '{"name": "get_weather", "arguments": {"ci'
    assert not any(c.tool_call for c in chunks)


# -- rendering ----------------------------------------------------------------------------------------------

TODAY = datetime.date(2024, 7, 26)


def dialog(*history, message=None) -> Dialog:
    return Dialog(
        message=message or {"role": "user", "content": "What is the weather in Paris?"}, message_history=list(history)
    )


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def render(d, tools=TOOLS, choice="auto", fmt=JSON, inline=None):
    return render_messages(d, tools, choice, fmt, inline or InlinedAttachments(), today=TODAY)


def test_json_format_offers_the_tools_in_the_system_message():
    messages = render(dialog(SYSTEM), [WEATHER, SEARCH])
    assert [m["role"] for m in messages] == ["system", "user"]
    system = messages[0]["content"]
    assert system.startswith("You are a helpful assistant.\n\n")
    head = JSON_TOOL_PROMPT.split("{tools}")[0]
    assert head in system and JSON_TOOL_PROMPT.split("{tools}")[1] in system
    definitions = system.split(head)[1].split("\n\n")[0].splitlines()
    assert [json.loads(line)["name"] for line in definitions] == ["get_weather", "web_search"]
    assert json.loads(definitions[0])["parameters"] == WEATHER.parameters
    assert json.loads(definitions[1])["parameters"]["required"] == ["query"]  # a built-in gets a schema
    assert messages[1] == {"role": "user", "content": "What is the weather in Paris?"}


def test_without_a_system_message_one_is_added_only_when_tools_are_offered():
    assert render(dialog(), [WEATHER])[0]["role"] == "system"
    assert render(dialog(), []) == [{"role": "user", "content": "What is the weather in Paris?"}]
    assert render(dialog(SYSTEM), [WEATHER], "none") == render(dialog(SYSTEM), [])
    assert render(dialog(SYSTEM), [WEATHER], "none") == [
        SYSTEM,
        {"role": "user", "content": "What is the weather in Paris?"},
    ]


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_tool_choice_instructions(fmt):
    assert REQUIRED_TOOL_PROMPT in render(dialog(SYSTEM), [WEATHER, ADD], "required", fmt)[0]["content"]
    named = render(dialog(SYSTEM), [WEATHER, ADD], "add", fmt)[0]["content"]
    assert NAMED_TOOL_PROMPT.replace("{name}", "add") in named
    auto = render(dialog(SYSTEM), [WEATHER, ADD], "auto", fmt)[0]["content"]
    assert REQUIRED_TOOL_PROMPT not in auto and "You must" not in auto


def tool_round(fmt_calls):
    return dialog(
        SYSTEM,
        {"role": "user", "content": "Weather in Paris, and 2+3?"},
        {"role": "assistant", "content": "", "tool_calls": fmt_calls},
        {"role": "tool", "content": "22C, sunny"},
        {"role": "tool", "content": "5"},
        message={"role": "user", "content": "Thanks. Summarize."},
    )


CALLS = [
    {"tool_name": "get_weather", "arguments": {"city": "Paris"}, "call_id": "call_0"},
    {"tool_name": "add", "arguments": {"a": 2, "b": 3}, "call_id": "call_1"},
]


def test_json_format_renders_calls_and_results():
    messages = render(tool_round(CALLS), [WEATHER, ADD])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"].splitlines() == [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "add", "arguments": {"a": 2, "b": 3}}',
    ]
    # Results and the next user message merge into one user message: generic templates want alternation.
    assert messages[3]["content"] == (
        "Tool result (get_weather, call call_0): 22C, sunny\nTool result (add, call call_1): 5\n\nThanks. Summarize."
    )
    # The rendered assistant message parses back into the same calls.
    assert parsed(messages[2]["content"], JSON, [WEATHER, ADD])[1] == [(c["tool_name"], c["arguments"]) for c in CALLS]


def test_results_that_end_the_dialog_ask_for_an_answer():
    d = tool_round(CALLS)
    d = Dialog(message=d.message_history[-1], message_history=d.message_history[:-1])  # the last result ends it
    json_messages = render(d, [WEATHER, ADD], "none")
    assert json_messages[-1] == {
        "role": "user",
        "content": f"Tool result (get_weather, call call_0): 22C, sunny\nTool result (add, call call_1): 5\n\n{TOOL_RESULTS_PROMPT}",
    }
    assert TOOL_RESULTS_PROMPT not in str(render(d, [WEATHER, ADD], "none", LLAMA3))  # ipython messages say it already


def test_tool_responses_on_a_message_are_rendered():
    d = dialog(
        {"role": "assistant", "content": "", "tool_calls": [CALLS[0]]},
        message={
            "role": "user",
            "content": "And now?",
            "tool_responses": [{"tool_name": "get_weather", "content": "rain", "call_id": "call_0"}],
        },
    )
    json_messages = render(d, [WEATHER])
    assert json_messages[-1] == {"role": "user", "content": "Tool result (get_weather, call call_0): rain\n\nAnd now?"}
    llama = render(d, [WEATHER], fmt=LLAMA3)
    assert llama[-2:] == [{"role": "ipython", "content": "rain"}, {"role": "user", "content": "And now?"}]
    # A message carrying only tool responses ends the dialog with them.
    only = Dialog(message={**d.message.model_dump(), "content": ""}, message_history=d.message_history)
    assert render(only, [WEATHER])[-1] == {
        "role": "user",
        "content": f"Tool result (get_weather, call call_0): rain\n\n{TOOL_RESULTS_PROMPT}",
    }
    assert render(only, [WEATHER], fmt=LLAMA3)[-1] == {"role": "ipython", "content": "rain"}


def test_llama3_format_follows_meta_prompt_format():
    messages = render(tool_round(CALLS), [WEATHER, ADD, SEARCH, MATH, CODE], fmt=LLAMA3)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "ipython", "ipython", "user"]
    system = messages[0]["content"]
    assert system.startswith(
        "Environment: ipython\nTools: brave_search, wolfram_alpha\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You have access to the following functions."
    )
    assert (
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}'
        in system
    )
    functions = [
        json.loads(block)
        for block in system.split("Do not use variables.\n\n")[1].split("\n\n")
        if block.startswith("{")
    ]
    assert [f["function"]["name"] for f in functions] == ["get_weather", "add"]  # built-ins are not JSON functions
    assert system.endswith("You are a helpful assistant.")
    assert (
        messages[2]["content"]
        == '{"name": "get_weather", "parameters": {"city": "Paris"}}\n{"name": "add", "parameters": {"a": 2, "b": 3}}'
    )
    assert messages[3:5] == [{"role": "ipython", "content": "22C, sunny"}, {"role": "ipython", "content": "5"}]


def test_llama3_builtin_calls_render_through_python_tag_and_parse_back():
    calls = [{"tool_name": "web_search", "arguments": {"query": 'say "hi"'}}]
    messages = render(tool_round(calls), [SEARCH], fmt=LLAMA3)
    assert messages[2]["content"] == '<|python_tag|>brave_search.call(query="say \\"hi\\"")'
    assert parsed(messages[2]["content"], LLAMA3, [SEARCH])[1] == [call("web_search", query='say "hi"')]
    code = render(
        tool_round([{"tool_name": "code_interpreter", "arguments": {"code": "print(1)"}}]), [CODE], fmt=LLAMA3
    )
    assert code[2]["content"] == "<|python_tag|>print(1)"
    assert "Tools:" not in code[0]["content"] and code[0]["content"].startswith("Environment: ipython\n")


def test_inline_is_called_with_field_paths():
    seen = []

    def inline(content, where):
        seen.append(where)
        return str(content)

    d = dialog(
        SYSTEM,
        {"role": "assistant", "content": "", "tool_calls": [CALLS[0]]},
        message={"role": "user", "content": "x", "tool_responses": [{"tool_name": "get_weather", "content": "y"}]},
    )
    render(d, [WEATHER], inline=inline)
    assert seen == [
        "dialog.message_history[0].content",
        "dialog.message_history[1].content",
        "dialog.message.content",
        "dialog.message.tool_responses[0].content",
    ]


# -- forcing a call ---------------------------------------------------------------------------------------


def test_tool_call_schema():
    assert tool_call_schema([WEATHER], "auto", JSON) is None
    assert tool_call_schema([WEATHER], "none", JSON) is None
    one = tool_call_schema([WEATHER, ADD], "get_weather", JSON)
    assert (
        one["properties"]["name"] == {"const": "get_weather"} and one["properties"]["arguments"] == WEATHER.parameters
    )
    check_json('{"name": "get_weather", "arguments": {"city": "Paris"}}', one)
    with pytest.raises(ValueError, match="does not match"):
        check_json('{"name": "add", "arguments": {"a": 1, "b": 2}}', one)
    both = tool_call_schema([WEATHER, ADD], "required", JSON)
    check_json('{"name": "add", "arguments": {"a": 1, "b": 2}}', both)
    assert tool_call_schema([WEATHER], "required", LLAMA3)["required"] == ["name", "parameters"]
    assert tool_call_schema([SEARCH, WEATHER], "required", LLAMA3) is None  # built-ins go through <|python_tag|>
    assert tool_call_schema([SEARCH, WEATHER], "required", JSON) is not None


def test_json_schema_for_response_formats():
    from llama_stack.apis.inference import ResponseFormat

    assert json_schema_for(None) is None
    assert json_schema_for(ResponseFormat(type="text")) is None
    assert json_schema_for(ResponseFormat(type="json_object")) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert json_schema_for(ResponseFormat(type="json_schema", json_schema=schema)) == schema
    assert check_json('{"a": 1}', schema) == {"a": 1}
    for bad, reason in [
        ('{"a": "x"}', "does not match the schema at a"),
        ("{", "not valid JSON"),
        ("{}", "does not match"),
    ]:
        with pytest.raises(ValueError, match=reason):
            check_json(bad, schema)


def test_random_outputs_never_raise_and_stream_like_they_parse():
    import random

    rng = random.Random(1234)  # fixed: the same outputs every run
    alphabet = [
        '{"name": "add", "arguments": {"a": 1}}',
        '{"name"',
        "{",
        "}",
        "[",
        "]",
        '"',
        "\\",
        "\n",
        " ",
        "```",
        "json",
        "<tool_call>",
        "</tool_call>",
        "<|python_tag|>",
        "brave_search.call(query='x')",
        "Paris",
        ",",
        ":",
        "<",
        "|",
    ]
    for _ in range(400):
        output = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for fmt in ToolFormat:
            text, calls = parsed(output, fmt, TOOLS)
            chunks = stream_pieces(fmt, output, rng.randint(1, 5))
            assert ("".join(c.text_delta for c in chunks), named([c.tool_call for c in chunks if c.tool_call])) == (
                text,
                calls,
            )
