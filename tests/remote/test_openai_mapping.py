"""The OpenAI-style mapping every remote inference adapter shares (providers.utils.remote.openai_chat and
.openai_answers, whose OpenAIAnswerReader reads Together's and openai-compat's answers): the choices made
where the adapters used to differ."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from llama_stack.apis.common import Dialog, Message, Role, StopReason, ToolCall, ToolResponse
from llama_stack.apis.errors import BadRequestError, ProviderError
from llama_stack.apis.inference import SamplingParams, Usage
from llama_stack.providers.utils.remote.openai_answers import (
    OpenAIAnswerReader,
    ToolCallAssembler,
    chat_logprobs,
    embeddings_of,
    first_choice,
    legacy_logprobs,
    split_echo,
    stop_reason,
    tool_calls,
    usage_of,
)
from llama_stack.providers.utils.remote.openai_chat import openai_messages, sampling_fields

SERVICE: Any = SimpleNamespace(name="provider 'p' (Vendor)", provider_id="p")
TOKEN = {"token": "Hi", "logprob": -0.1, "top_logprobs": []}


def text(content: Any, where: str, role: Role) -> str:
    return str(content)


def dialog(*messages: Message) -> Dialog:
    return Dialog(message_history=list(messages[:-1]), message=messages[-1])


ASKED = Message(
    role=Role.assistant,
    content="",
    tool_calls=[
        ToolCall(tool_name="get_weather", arguments={"city": "Zürich"}),
        ToolCall(tool_name="get_time", arguments={}),
    ],
)


def test_finish_reasons():
    assert [
        stop_reason(r) for r in (None, "", "length", "max_tokens", "stop", "eos", "tool_calls", "content_filter")
    ] == [
        StopReason.not_stopped,
        StopReason.not_stopped,
        StopReason.max_tokens,
        StopReason.max_tokens,
        *[StopReason.finished_ok] * 4,
    ]


def test_usage_needs_both_counts():
    assert usage_of({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == Usage(
        prompt_tokens=3, completion_tokens=4
    )
    assert (
        usage_of({"prompt_tokens": 3}) is None
        and usage_of(None) is None
        and usage_of({"prompt_tokens": True, "completion_tokens": 1}) is None
    )


def test_the_first_choice_is_choice_zero_and_none_is_a_502():
    answer = {"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]}
    assert first_choice(answer, SERVICE, "POST /x")["text"] == "a"
    with pytest.raises(ProviderError) as caught:
        first_choice({"choices": []}, SERVICE, "POST /x")
    assert "provider 'p' (Vendor) answered POST /x without a choice" in caught.value.message


def test_arguments_that_are_not_a_json_object_are_kept_raw():
    raw = [
        {"id": "a", "function": {"name": "f", "arguments": "{bad"}},
        {"id": "b", "function": {"name": "g", "arguments": "[1]"}},
        {"id": "c", "function": {"name": "h", "arguments": {"x": 1}}},
        {"id": "d", "function": {"name": "i", "arguments": ""}},
        "not a call",
    ]
    assert [(c.tool_name, c.arguments, c.call_id) for c in tool_calls(raw)] == [
        ("f", {"raw_arguments": "{bad"}, "a"),
        ("g", {"raw_arguments": "[1]"}, "b"),
        ("h", {"x": 1}, "c"),
        ("i", {}, "d"),
    ]


def test_streamed_fragments_are_gathered_by_index_or_else_by_id():
    by_index = ToolCallAssembler()
    by_index.add([{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y"'}}])
    by_index.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}])
    by_index.add([{"index": 1, "function": {"arguments": ": 2}"}}])
    assert by_index.calls() == [
        ToolCall(tool_name="f", arguments={}, call_id="a"),
        ToolCall(tool_name="g", arguments={"y": 2}, call_id="b"),
    ]

    no_index = ToolCallAssembler()
    for fragment in (
        {"id": "a", "function": {"name": "f", "arguments": '{"x"'}},
        {"function": {"arguments": ": 1}"}},
        {"id": "b", "function": {"name": "g", "arguments": {"z": 3}}},
    ):
        no_index.add([fragment])
    assert no_index.calls() == [
        ToolCall(tool_name="f", arguments={"x": 1}, call_id="a"),
        ToolCall(tool_name="g", arguments={"z": 3}, call_id="b"),
    ]


def test_sampling_fields_send_only_what_changes_sampling():
    assert sampling_fields(SamplingParams(top_k=40, seed=1)) == {"temperature": 0.0, "seed": 1}
    sampled = SamplingParams(strategy="top_k", temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1)
    assert sampling_fields(sampled) == {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}
    penalized = SamplingParams(frequency_penalty=0.5, presence_penalty=-1, logit_bias={42: -100})
    assert sampling_fields(penalized) == {
        "temperature": 0.0,
        "frequency_penalty": 0.5,
        "presence_penalty": -1,
        "logit_bias": {"42": -100},
    }


def test_results_are_linked_to_their_calls_by_id_else_by_name():
    results = Message(
        role=Role.tool,
        content="ignored: it repeats the responses",
        tool_responses=[
            ToolResponse(tool_name="get_time", content="12:00"),
            ToolResponse(tool_name="get_weather", content="sun"),
        ],
    )
    messages = openai_messages(dialog(Message(role=Role.user, content="?"), ASKED, results), text, SERVICE)
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert messages[1]["content"] is None and "index" not in messages[1]["tool_calls"][0]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Zürich"}'
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_1_1", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_1_0", "content": "sun"},
    ]


def test_vendor_options_number_the_calls_and_send_empty_text_as_a_string():
    own = Message(role=Role.tool, content="sun")
    messages = openai_messages(dialog(ASKED, own), text, SERVICE, numbered_calls=True, no_text="")
    assert messages[0]["content"] == "" and [c["index"] for c in messages[0]["tool_calls"]] == [0, 1]
    assert messages[1] == {"role": "tool", "tool_call_id": "call_0_0", "content": "sun"}


def test_a_result_naming_no_unanswered_call_is_refused():
    wrong = Message(role=Role.tool, content="", tool_responses=[ToolResponse(tool_name="get_news", content="x")])
    with pytest.raises(BadRequestError) as caught:
        openai_messages(dialog(ASKED, wrong), text, SERVICE)
    assert caught.value.param == "dialog.message.tool_responses[0]" and caught.value.provider == "p"
    assert "dialog.message.tool_responses[0].call_id" in caught.value.message
    assert "get_weather (call_0_0), get_time (call_0_1)" in caught.value.message


# ------------------------------------------------------------------------------- the shared reader


def test_legacy_logprobs_rank_the_alternatives_and_cut_them_to_what_was_asked():
    part = {
        "tokens": ["Hello", " world", "!"],
        "token_logprobs": [None, -0.5, "bad"],
        "top_logprobs": [None, {" there": -2.0, " world": -0.5, " all": -1.0}, {"!": -0.1}],
    }
    logprobs = legacy_logprobs(part, 2)
    assert [(t.token, t.logprob) for t in logprobs.content] == [(" world", -0.5)]  # no logprob: left out
    assert [(a.token, a.logprob) for a in logprobs.content[0].top_logprobs] == [(" world", -0.5), (" all", -1.0)]
    assert legacy_logprobs(None, 2) is None


def test_chat_logprobs_skip_entries_without_a_token_and_a_logprob():
    part = {
        "content": [
            {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Yo"}]},
            {"token": "!", "logprob": None},
            {"token": " there", "logprob": -0.2, "top_logprobs": [{"token": " there", "logprob": -0.2}] * 3},
        ]
    }
    logprobs = chat_logprobs(part, 1)
    assert [(t.token, len(t.top_logprobs)) for t in logprobs.content] == [("Hi", 1), (" there", 1)]
    assert chat_logprobs({"content": None}, 1) is None


def test_an_echo_is_split_where_the_prompt_ends():
    choice = {
        "text": "The sky is blue",
        "logprobs": {
            "tokens": ["The", " sky", " is", " blue"],
            "token_logprobs": [None, -1.0, -0.5, -0.25],
            "top_logprobs": [None, {" sky": -1.0, " sea": -2.0}, {" is": -0.5}, {" blue": -0.25, " red": -3.0}],
        },
    }
    echoed = split_echo(choice, "The sky", prompt_top=1, top=None)
    assert echoed.text == " is blue" and echoed.logprobs is None
    assert [(p.token, p.logprob, len(p.top_logprobs)) for p in echoed.prompt_logprobs] == [
        ("The", None, 0),
        (" sky", -1.0, 1),
    ]
    answered = split_echo(choice, "The sky", prompt_top=0, top=2)
    assert [len(t.top_logprobs) for t in answered.logprobs.content] == [1, 2]
    # A prompt that does not end on a token boundary, or an answer that does not repeat it, cannot be scored.
    assert split_echo(choice, "The sk", 0, None) is None and split_echo(choice, "A sky", 0, None) is None


def test_embeddings_come_back_in_input_order_and_a_mismatch_is_a_502():
    answer = {"data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}]}
    assert embeddings_of(answer, 2, SERVICE, "POST /embeddings") == [[1.0, 0.0], [0.0, 1.0]]
    for wrong in ({"data": [{"index": 0, "embedding": [1]}]}, {"data": [{"embedding": [1]}]}, {"nothing": 1}):
        with pytest.raises(ProviderError) as caught:
            embeddings_of(wrong, 2, SERVICE, "POST /embeddings")
        assert caught.value.status == 502 and "answered POST /embeddings" in caught.value.message


async def _events(*events: Any) -> AsyncIterator[Any]:
    for event in events:
        yield event


async def _collect(chunks: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in chunks]


async def test_a_chat_stream_gives_text_then_the_calls_then_the_stop_and_the_last_usage():
    reader = OpenAIAnswerReader(SERVICE)
    events = _events(
        {"choices": [{"index": 0, "delta": {"content": "Let me look"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    )
    chunks = await _collect(reader.chat_chunks(events, None))
    assert [(c.text_delta, c.tool_call, c.stop_reason) for c in chunks] == [
        ("Let me look", None, StopReason.not_stopped),
        ("", ToolCall(tool_name="f", arguments={}, call_id="a"), StopReason.not_stopped),
        ("", None, StopReason.finished_ok),
    ]
    assert chunks[-1].usage == Usage(prompt_tokens=5, completion_tokens=3)


async def test_logprobs_are_read_only_when_asked_for():
    event = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [TOKEN]}}]}
    reader = OpenAIAnswerReader(SERVICE)
    (unasked, _) = await _collect(reader.chat_chunks(_events(event), None))
    (asked, _) = await _collect(reader.chat_chunks(_events(event), 0))
    assert unasked.logprobs is None and [t.token for t in asked.logprobs.content] == ["Hi"]


async def test_a_stream_event_that_is_not_an_object_is_a_502_naming_the_provider():
    with pytest.raises(ProviderError) as caught:
        await _collect(OpenAIAnswerReader(SERVICE).completion_chunks(_events("oops"), None))
    assert caught.value.provider == "p" and "a completion stream event that is not an object" in caught.value.message


async def test_an_answer_without_finish_reason_ended_as_its_reader_says():
    class NeverSilent(OpenAIAnswerReader):
        unstated_finish = StopReason.not_stopped

    answer = {"choices": [{"text": "abc"}]}
    assert OpenAIAnswerReader(SERVICE).completion_response(answer, None).stop_reason == StopReason.finished_ok
    assert NeverSilent(SERVICE).completion_response(answer, None).stop_reason == StopReason.not_stopped
    # The finish reason may also come beside the choices (Together's completion stream does that).
    events = _events({"choices": [{"index": 0, "text": "abc"}]}, {"choices": [], "finish_reason": "length"})
    chunks = await _collect(NeverSilent(SERVICE).completion_chunks(events, None))
    assert [c.text_delta for c in chunks] == ["abc", ""] and chunks[-1].stop_reason == StopReason.max_tokens
