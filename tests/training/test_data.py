"""How rows become tokens: which tokens carry the loss in each format, cut rows, bad rows, and each process's
share of a batch (SmolLM2's real tokenizer and chat template)."""

from __future__ import annotations

import json

import pytest
import torch

from llama_stack.providers.inline.torch.training.data import (
    IGNORE,
    DataError,
    Encoder,
    Example,
    Pair,
    collate,
    epoch_batches,
    shard,
)
from llama_stack.providers.inline.torch.training.spec import DataSpec

SYSTEM_DEFAULT = "You are a helpful AI assistant named SmolLM"


def encoder(tokenizer, kind: str, columns: dict[str, str], max_seq_len: int = 512) -> Encoder:
    return Encoder(tokenizer, DataSpec(format=kind, columns=columns), max_seq_len)


def text_of(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def loss_text(tokenizer, example: Example) -> str:
    """The text of the tokens that carry the loss (runs of them joined by '|')."""
    runs, run = [], []
    for label in example.labels:
        if label == IGNORE:
            if run:
                runs.append(run)
            run = []
        else:
            run.append(label)
    if run:
        runs.append(run)
    return "|".join(text_of(tokenizer, r) for r in runs)


def test_a_dialog_carries_the_loss_on_assistant_messages_only(smollm2_tokenizer):
    tok = smollm2_tokenizer
    row = {
        "chat": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]},
            {"role": "assistant", "content": "Rome.", "stop_reason": "end_of_turn"},
        ]
    }
    example = encoder(tok, "dialog", {"dialog": "chat"}).encode(0, row, "row 1")
    assert isinstance(example, Example)
    # The model reads the whole conversation as the template renders it ...
    whole = tok.apply_chat_template(
        [
            {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "And of Italy?"}
            for m in row["chat"]
        ],
        tokenize=False,
    )
    assert text_of(tok, example.input_ids) == whole
    # ... and learns only the assistant's answers with their end-of-turn, not the headers or other turns.
    assert loss_text(tok, example) == "Paris.<|im_end|>\n|Rome.<|im_end|>\n"
    assert example.loss_tokens == len(tok("Paris.<|im_end|>\nRome.<|im_end|>\n", add_special_tokens=False)["input_ids"])


def test_the_prompt_tokens_are_those_inference_feeds_the_model(smollm2_tokenizer):
    tok = smollm2_tokenizer
    dialog = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    example = encoder(tok, "dialog", {"dialog": "dialog"}).encode(0, {"dialog": dialog}, "row 1")
    prompt = tok.apply_chat_template(dialog[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE for label in example.labels[: len(prompt_ids)])
    assert all(label != IGNORE for label in example.labels[len(prompt_ids) :])


def test_prompt_completion_carries_the_loss_on_the_completion_and_its_end(smollm2_tokenizer):
    tok = smollm2_tokenizer
    example = encoder(tok, "prompt_completion", {"prompt": "q", "completion": "a"}).encode(
        0, {"q": "The capital of France is", "a": " Paris"}, "row 1"
    )
    assert text_of(tok, example.input_ids) == "The capital of France is Paris" + tok.eos_token
    assert loss_text(tok, example) == " Paris" + tok.eos_token


def test_a_dialog_prompt_with_a_completion_goes_through_the_chat_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = [{"role": "user", "content": "Say hi"}]
    example = encoder(tok, "prompt_completion", {"prompt": "p", "completion": "c"}).encode(
        0, {"p": prompt, "c": "Hi!"}, "row 1"
    )
    assert SYSTEM_DEFAULT in text_of(tok, example.input_ids)
    assert loss_text(tok, example) == "Hi!<|im_end|>\n"


def test_text_carries_the_loss_on_every_token(smollm2_tokenizer):
    tok = smollm2_tokenizer
    example = encoder(tok, "text", {"text": "body"}).encode(0, {"body": "Once upon a time"}, "row 1")
    assert example.labels == example.input_ids
    assert text_of(tok, example.input_ids) == "Once upon a time" + tok.eos_token
    assert example.loss_tokens == len(example.input_ids) - 1  # the first token is never predicted


@pytest.mark.parametrize("shape", ["text", "dialogs", "dialog prompt"])
def test_preference_pairs_score_the_answers_only(smollm2_tokenizer, shape):
    tok = smollm2_tokenizer
    columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    if shape == "text":
        row = {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}
        expected = (" 4" + tok.eos_token, " 5" + tok.eos_token)
    elif shape == "dialogs":
        columns.pop("prompt")
        question = {"role": "user", "content": "2+2?"}
        row = {
            "chosen": [question, {"role": "assistant", "content": "4"}],
            "rejected": [question, {"role": "assistant", "content": "5"}],
        }
        expected = ("4<|im_end|>\n", "5<|im_end|>\n")
    else:
        row = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
        expected = ("4<|im_end|>\n", "5<|im_end|>\n")
    pair = encoder(tok, "preference", columns).encode(0, row, "row 1")
    assert isinstance(pair, Pair)
    assert (loss_text(tok, pair.chosen), loss_text(tok, pair.rejected)) == expected
    # The same prompt before both answers.
    prompt_length = pair.chosen.labels.index(next(label for label in pair.chosen.labels if label != IGNORE))
    assert pair.chosen.input_ids[:prompt_length] == pair.rejected.input_ids[:prompt_length]


def test_rows_longer_than_max_seq_len_lose_their_end(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"t": "word " * 100}) + "\n" + json.dumps({"t": "short"}) + "\n")
    rows = encoder(tok, "text", {"text": "t"}, max_seq_len=16).encode_file(path)
    assert [len(item.input_ids) for item in rows.items] == [16, 2]
    assert rows.truncated == 1
    assert text_of(tok, rows.items[0].input_ids).startswith("word word")


def test_a_prompt_that_fills_max_seq_len_leaves_a_row_without_loss(smollm2_tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"q": "word " * 50, "a": "end"}) + "\n")
    rows = encoder(smollm2_tokenizer, "prompt_completion", {"prompt": "q", "completion": "a"}, 8).encode_file(path)
    assert rows.without_loss == [1]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"dialog": [{"role": "user", "content": "hi"}]}', "row 2 column 'dialog': no assistant message"),
        ('{"other": 1}', "row 2: no column 'dialog'"),
        ('{"dialog": "hello"}', "row 2 column 'dialog': expected a dialog"),
        ('{"dialog": [{"role": "robot", "content": "x"}]}', "row 2 column 'dialog' message 1: role 'robot'"),
        (
            '{"dialog": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]}',
            "row 2 column 'dialog' message 1: content of type 'image' cannot be trained on",
        ),
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_a_bad_row_is_named_with_its_column(smollm2_tokenizer, tmp_path, line, expected):
    path = tmp_path / "train.jsonl"
    good = {"dialog": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace("[", r"\[")) as caught:
        encoder(smollm2_tokenizer, "dialog", {"dialog": "dialog"}).encode_file(path)
    assert "train.jsonl" in str(caught.value)


def test_an_empty_file_is_refused(smollm2_tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        encoder(smollm2_tokenizer, "text", {"text": "t"}).encode_file(path)


def test_batches_cover_the_rows_once_per_epoch_in_a_seeded_order():
    first = epoch_batches(10, 4, shuffle=True, seed=3, epoch=1)
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert first == epoch_batches(10, 4, shuffle=True, seed=3, epoch=1)
    assert first != epoch_batches(10, 4, shuffle=True, seed=3, epoch=2)
    assert epoch_batches(5, 2, shuffle=False, seed=0, epoch=1) == [[0, 1], [2, 3], [4]]


def test_each_process_takes_its_share_and_fillers_carry_no_loss():
    items = [Example(i, [1, 2, 3], [1, 2, 3]) for i in range(5)]
    shares = [shard(items, rank, 2) for rank in range(2)]
    assert [[item.index for item in share if not item.filler] for share in shares] == [[0, 2, 4], [1, 3]]
    assert len(shares[1]) == 3  # as many rows as the other process: the same passes on both
    filler = shares[1][2]
    assert filler.filler and filler.loss_tokens == 0 and filler.tokens == 0
    assert sum(item.tokens for share in shares for item in share) == 15


def test_collate_pads_without_loss_or_attention():
    batch = collate([Example(0, [5, 6, 7], [IGNORE, 6, 7]), Example(1, [8], [8])], pad_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch.tokens == 4
