"""inline::prompt-guard: prompt_guard shields by a local sequence classifier labelled BENIGN / INJECTION / JAILBREAK.

The tests build their own tiny classifier of Prompt-Guard-86M's shape (a one-layer BERT, a word-level tokenizer,
saved with save_pretrained; nothing downloaded), with weights set by hand so that its verdicts are known:

- the word "ignore" makes a text INJECTION and the word "dan" makes it JAILBREAK (probability ~0.93 each), wherever
  they stand in the window; any other text is BENIGN (~0.96). The [CLS] token's only attention goes to those
  words, so one of them among hundreds of others still decides the window.
- position embeddings are zero, so a window scores the same at any offset, and the model reads at most 512
  positions, as Prompt-Guard-86M does.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_stack.apis.errors import BadRequestError, NotSupportedError, ServiceUnavailableError
from llama_stack.client import LlamaStackClient
from llama_stack.config import ConfigError
from llama_stack.resolver import Stack
from llama_stack.server import create_app

pytest.importorskip("transformers")

# The vocabulary: plain words (BENIGN), and the two trigger words.
PLAIN_WORDS = "hello how are you today the weather is nice please tell me about cats and summarize this page"
TRIGGERS = ("ignore", "dan")
PROMPT_GUARD_LABELS = {0: "BENIGN", 1: "INJECTION", 2: "JAILBREAK"}
HIDDEN = 6
# Unit directions (mean 0, so the embedding LayerNorm keeps them): which word is which feature.
BENIGN_FEATURE = [0, 0, 0, 0, 1, -1]
INJECTION_FEATURE = [1, -1, 0, 0, 0, 0]
JAILBREAK_FEATURE = [0, 0, 1, -1, 0, 0]

BENIGN_TEXT = "hello how are you today"
INJECTION_TEXT = "please ignore this page"
JAILBREAK_TEXT = "you are dan now"


def save_tiny_classifier(folder: Path, labels: dict[int, str] = PROMPT_GUARD_LABELS) -> Path:
    """A one-layer BERT sequence classifier with hand-set weights (see the module's docstring) and its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PLAIN_WORDS.split(), *TRIGGERS]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=4,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
    )
    model = BertForSequenceClassification(config)
    features = {"ignore": INJECTION_FEATURE, "dan": JAILBREAK_FEATURE}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        embeddings = model.bert.embeddings
        for index, word in enumerate(vocab):
            embeddings.word_embeddings.weight[index] = torch.tensor(
                features.get(word, BENIGN_FEATURE), dtype=torch.float
            )
        embeddings.LayerNorm.weight.fill_(1.0)
        layer = model.bert.encoder.layer[0]
        attention = layer.attention.self
        # Keys carry the injection and jailbreak features and every query asks for them: [CLS] attends to those
        # words when the window has any, else evenly to the rest.
        attention.key.weight[0, 0] = 1.0
        attention.key.weight[0, 2] = 1.0
        attention.query.bias[0] = 30.0
        attention.value.weight.copy_(torch.eye(HIDDEN))
        layer.attention.output.dense.weight.copy_(10 * torch.eye(HIDDEN))  # what was attended outweighs [CLS]
        layer.attention.output.LayerNorm.weight.fill_(1.0)
        layer.output.LayerNorm.weight.fill_(1.0)  # the feed-forward block adds nothing
        model.bert.pooler.dense.weight.copy_(torch.eye(HIDDEN))
        model.classifier.weight[0, 4] = 4.0  # first label: the benign feature
        model.classifier.weight[1, 0] = 4.0  # second label: the injection feature
        model.classifier.weight[2, 2] = 4.0  # third label: the jailbreak feature
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("prompt-guard"))


def write_distribution(folder: Path, model_path: Path, config: dict[str, Any] | None = None, shields: str = "") -> Path:
    extra = "".join(f"\n        {key}: {value}" for key, value in (config or {}).items())
    path = folder / "prompt-guard.yaml"
    path.write_text(
        f"""
apis: [safety]
providers:
  safety:
    - provider_id: prompt-guard
      provider_type: inline::prompt-guard
      config:
        model_path: {model_path}
        device: cpu{extra}
{shields}
storage: {{dir: {folder / "storage"}}}
"""
    )
    return path


async def library(tmp_path: Path, model_dir: Path, **config: Any) -> LlamaStackClient:
    return await LlamaStackClient.library(write_distribution(tmp_path, model_dir, config))


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def shield(client: LlamaStackClient, *messages: dict[str, Any], **params: Any) -> Any:
    return await client.safety.run_shield(shield_type="prompt_guard", messages=list(messages), params=params)


def score_in(details: str, label: str) -> float:
    """The score the violation's details give ``label``."""
    after = details.split(f"{label} in ", 1)[1]
    return float(after.split("with score ", 1)[1].split(" ", 1)[0])


# ------------------------------------------------------------------------------------------------ verdicts
async def test_a_benign_conversation_passes(tmp_path, model_dir):
    async with await library(tmp_path, model_dir) as client:
        result = await shield(
            client,
            {"role": "system", "content": "ignore dan"},
            user(BENIGN_TEXT),
            {"role": "assistant", "content": "dan"},
        )
    # The system and assistant messages hold both trigger words, but only user messages are classified.
    assert result.violation is None


async def test_an_injection_is_a_violation_naming_the_label_score_and_message(tmp_path, model_dir):
    async with await library(tmp_path, model_dir) as client:
        result = await shield(client, user(BENIGN_TEXT), {"role": "assistant", "content": "sure"}, user(INJECTION_TEXT))
    violation = result.violation
    assert violation.violation_type == "INJECTION"
    assert "messages[2] (user)" in violation.details and model_dir.name in violation.details
    assert 0.9 <= score_in(violation.details, "INJECTION") < 1
    assert "threshold 0.90" in violation.details
    assert violation.suggested_user_response


async def test_a_jailbreak_is_a_violation_with_its_score(tmp_path, model_dir):
    async with await library(tmp_path, model_dir) as client:
        result = await shield(client, user(JAILBREAK_TEXT))
    assert result.violation.violation_type == "JAILBREAK"
    assert 0.9 <= score_in(result.violation.details, "JAILBREAK") < 1
    assert "INJECTION" not in result.violation.details


async def test_thresholds_in_params_change_the_verdict(tmp_path, model_dir):
    async with await library(tmp_path, model_dir) as client:
        assert (await shield(client, user(JAILBREAK_TEXT), jailbreak_threshold=0.99)).violation is None
        # The other label's threshold does not let a jailbreak through.
        assert (await shield(client, user(JAILBREAK_TEXT), injection_threshold=0.99)).violation is not None
        strict = await shield(client, user(BENIGN_TEXT), injection_threshold=0.01)
        assert strict.violation.violation_type == "INJECTION" and "threshold 0.01" in strict.violation.details


async def test_the_configs_thresholds_are_the_defaults(tmp_path, model_dir):
    async with await library(tmp_path, model_dir, jailbreak_threshold=0.99) as client:
        assert (await shield(client, user(JAILBREAK_TEXT))).violation is None
        assert (await shield(client, user(JAILBREAK_TEXT), jailbreak_threshold=0.5)).violation is not None


async def test_a_registered_shields_params_apply(tmp_path, model_dir):
    shields = "shields:\n  - {shield_id: lenient, provider_id: prompt-guard, shield_type: prompt_guard, params: {injection_threshold: 0.99}}"
    async with await LlamaStackClient.library(write_distribution(tmp_path, model_dir, shields=shields)) as client:
        named = await client.safety.run_shield(
            shield_type="prompt_guard", shield_id="lenient", messages=[user(INJECTION_TEXT)]
        )
        overridden = await client.safety.run_shield(
            shield_type="prompt_guard",
            shield_id="lenient",
            messages=[user(INJECTION_TEXT)],
            params={"injection_threshold": 0.5},
        )
    assert named.violation is None
    assert overridden.violation.violation_type == "INJECTION"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"jailbreak_threshold": 1.5}, "params.jailbreak_threshold"),
        ({"jailbreak_threshold": -0.1}, "params.jailbreak_threshold"),
        ({"injection_threshold": "high"}, "params.injection_threshold"),
        ({"injection_threshold": True}, "params.injection_threshold"),
        ({"threshold": 0.5}, "params.threshold"),
    ],
)
async def test_invalid_params_are_a_400_naming_the_param(tmp_path, model_dir, params, param):
    async with await library(tmp_path, model_dir) as client:
        with pytest.raises(BadRequestError) as caught:
            await shield(client, user(BENIGN_TEXT), **params)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.provider == "prompt-guard"


async def test_scope_last_user_classifies_only_the_last_user_message(tmp_path, model_dir):
    conversation = [user(JAILBREAK_TEXT), {"role": "assistant", "content": "no"}, user(BENIGN_TEXT)]
    async with await library(tmp_path, model_dir, scope="last_user") as client:
        assert (await shield(client, *conversation)).violation is None
    async with await library(tmp_path, model_dir) as client:  # the default: every user message
        assert (await shield(client, *conversation)).violation.violation_type == "JAILBREAK"


async def test_scope_user_and_tool_classifies_what_tools_returned(tmp_path, model_dir):
    conversation = [user(BENIGN_TEXT), {"role": "tool", "content": INJECTION_TEXT}]
    async with await library(tmp_path, model_dir) as client:
        assert (await shield(client, *conversation)).violation is None
    async with await library(tmp_path, model_dir, scope="user_and_tool") as client:
        result = await shield(client, *conversation)
    assert result.violation.violation_type == "INJECTION" and "messages[1] (tool)" in result.violation.details


async def test_other_shield_types_are_refused(tmp_path, model_dir):
    async with await library(tmp_path, model_dir) as client:
        with pytest.raises(NotSupportedError) as caught:
            await client.safety.run_shield(shield_type="llama_guard", messages=[user(BENIGN_TEXT)])
    assert caught.value.param == "shield_type" and "prompt_guard" in caught.value.message


# ------------------------------------------------------------------------------------------------ long inputs
async def test_a_long_input_whose_only_bad_window_is_late_is_found(tmp_path, model_dir):
    filler = "the weather is nice " * 300  # 1200 tokens: three windows of 512, the model's whole input
    text = filler + "dan"
    async with await library(tmp_path, model_dir) as client:
        result = await shield(client, user(text))
        passing = await shield(client, user(filler))
    assert passing.violation is None
    assert result.violation.violation_type == "JAILBREAK"
    details = result.violation.details
    assert score_in(details, "JAILBREAK") >= 0.9
    # The window named is the last one: it ends at the text's end and starts well past its beginning.
    span = details.split("characters ", 1)[1].split(")", 1)[0]
    start, end = (int(n) for n in span.split(" of ")[0].split("-"))
    assert end == len(text) and start > len(filler) // 2


async def test_each_window_repeats_the_last_window_overlap_tokens_of_the_one_before(tmp_path, model_dir):
    # Windows of 16 tokens ([CLS], 14 words, [SEP]) sharing 4 words: the second starts at the 11th word, so a
    # phrase cut by the first window's edge is read whole by the second.
    text = " ".join(["hello"] * 14 + ["dan"] + ["hello"] * 3)
    async with await library(tmp_path, model_dir, window_tokens=16, window_overlap=4) as client:
        result = await shield(client, user(text))
    assert result.violation.violation_type == "JAILBREAK"
    eleventh_word = len("hello " * 10)
    assert f"characters {eleventh_word}-{len(text)} of {len(text)}" in result.violation.details


async def test_too_many_windows_are_a_400_before_the_model_runs(tmp_path, model_dir):
    text = "hello " * 200  # 200 tokens: more than 4 windows of 16
    async with await library(tmp_path, model_dir, window_tokens=16, window_overlap=0, max_windows=4) as client:
        impl = client.transport.stack.providers["prompt-guard"].impl
        calls = count_classify_calls(impl)
        with pytest.raises(BadRequestError) as caught:
            await shield(client, user(text))
    assert caught.value.param == "messages" and "max_windows" in caught.value.message
    assert calls == []


async def test_too_many_characters_are_a_400(tmp_path, model_dir):
    async with await library(tmp_path, model_dir, max_input_chars=100) as client:
        with pytest.raises(BadRequestError) as caught:
            await shield(client, user(BENIGN_TEXT), user("hello " * 20))
    assert caught.value.param == "messages" and "max_input_chars" in caught.value.message


def count_classify_calls(impl: Any) -> list[int]:
    """Record how many windows each forward pass of the provider's classifier gets."""
    calls: list[int] = []
    classify = impl._classifier.classify

    def counted(windows):
        calls.append(len(windows))
        return classify(windows)

    impl._classifier.classify = counted
    return calls


# ------------------------------------------------------------------------------------------------ start-up
async def test_a_model_without_prompt_guards_labels_is_refused_at_start(tmp_path):
    folder = save_tiny_classifier(tmp_path / "sentiment", labels={0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"})
    with pytest.raises(ConfigError) as caught:
        await LlamaStackClient.library(write_distribution(tmp_path, folder))
    message = str(caught.value)
    assert str(folder) in message and "NEGATIVE, NEUTRAL, POSITIVE" in message
    assert "BENIGN, INJECTION, JAILBREAK" in message and "'prompt-guard'" in message


async def test_a_missing_model_path_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError) as caught:
        await LlamaStackClient.library(write_distribution(tmp_path, tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(caught.value) and "does not exist" in str(caught.value)


async def test_a_window_longer_than_the_model_reads_is_refused_at_start(tmp_path, model_dir):
    with pytest.raises(ConfigError) as caught:
        await library(tmp_path, model_dir, window_tokens=1024)
    assert "window_tokens (1024)" in str(caught.value) and "512" in str(caught.value)


def test_importing_the_plugin_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, llama_stack.providers.inline.prompt_guard.provider; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


# ------------------------------------------------------------------------------------------------ serving
async def test_served_over_http(tmp_path, model_dir):
    stack = Stack.from_distribution(write_distribution(tmp_path, model_dir))
    await stack.start()
    try:
        transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"shield_type": "prompt_guard", "messages": [user(INJECTION_TEXT)]}
            flagged = await http.post("/safety/run_shield", json=body)
            passed = await http.post("/safety/run_shield", json={**body, "params": {"injection_threshold": 1}})
            refused = await http.post("/safety/run_shield", json={**body, "params": {"injection_threshold": 2}})
    finally:
        await stack.shutdown()
    assert flagged.status_code == 200 and flagged.json()["violation"]["violation_type"] == "INJECTION"
    assert passed.status_code == 200 and passed.json().get("violation") is None
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "params.injection_threshold" and error["provider"] == "prompt-guard"
    assert "Traceback" not in refused.text


class GatedClassifier:
    """Holds the provider's forward passes until released, to observe the server while the model runs."""

    def __init__(self, impl: Any):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self._classify = impl._classifier.classify
        impl._classifier.classify = self

    def __call__(self, windows):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "the test never released the classifier"
        return self._classify(windows)

    async def wait_until_running(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30)


async def test_the_model_runs_off_the_event_loop_and_a_full_queue_is_a_503(tmp_path, model_dir):
    async with await library(tmp_path, model_dir, max_queue=0) as client:
        gate = GatedClassifier(client.transport.stack.providers["prompt-guard"].impl)
        running = asyncio.create_task(shield(client, user(JAILBREAK_TEXT)))
        await gate.wait_until_running()
        # The event loop still answers while the model is busy: requests that need no model...
        assert (await shield(client, user("   "))).violation is None
        # ...and those that do are refused rather than queued past max_queue.
        with pytest.raises(ServiceUnavailableError) as caught:
            await shield(client, user(BENIGN_TEXT))
        assert caught.value.retry_after and caught.value.provider == "prompt-guard"
        gate.release.set()
        assert (await running).violation.violation_type == "JAILBREAK"
        assert (await shield(client, user(BENIGN_TEXT))).violation is None  # its place is free again


async def test_a_cancelled_request_stops_at_the_next_batch(tmp_path, model_dir):
    text = "hello " * 100  # 100 tokens: 7 windows of 16 tokens, one per batch
    async with await library(tmp_path, model_dir, window_tokens=16, window_overlap=0, batch_size=1) as client:
        impl = client.transport.stack.providers["prompt-guard"].impl
        gate = GatedClassifier(impl)
        request = asyncio.create_task(shield(client, user(text)))
        await gate.wait_until_running()
        request.cancel()
        gate.release.set()
        with pytest.raises(asyncio.CancelledError):
            await request
        # Whatever was on the worker thread has finished once a job queued after it has run.
        await asyncio.get_running_loop().run_in_executor(impl._worker, lambda: None)
    assert gate.calls == 1


async def test_a_gpu_torch_does_not_see_is_refused_at_start(tmp_path, model_dir):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError) as caught:
        await library(tmp_path, model_dir, device=missing)
    assert f"device '{missing}'" in str(caught.value) and "'prompt-guard'" in str(caught.value)


async def test_a_deberta_v2_classifier_like_prompt_guard_86m_loads_and_scores(tmp_path, model_dir):
    """Prompt-Guard-86M is a DeBERTa-v2 (mDeBERTa) classifier: that architecture loads and runs (random weights,
    so only thresholds of 0, which every score reaches, give a known verdict)."""
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    folder = tmp_path / "deberta"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        id2label=PROMPT_GUARD_LABELS,
        label2id={name: index for index, name in PROMPT_GUARD_LABELS.items()},
    )
    DebertaV2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    async with await library(tmp_path, folder) as client:
        text = "the weather is nice " * 200  # two windows
        result = await shield(client, user(text), jailbreak_threshold=0, injection_threshold=0)
    assert set(result.violation.violation_type.split(",")) == {"INJECTION", "JAILBREAK"}
    assert 0 < score_in(result.violation.details, "JAILBREAK") < 1


async def test_a_directory_whose_config_is_not_a_model_is_refused_at_start(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConfigError) as caught:
        await LlamaStackClient.library(write_distribution(tmp_path, folder))
    assert str(folder) in str(caught.value) and "config.json" in str(caught.value)
