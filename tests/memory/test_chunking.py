"""Chunking by tokens with overlap: exact coverage, overlaps as configured, sizes within limits, good breaks."""

from __future__ import annotations

import itertools
import random

import pytest

from llama_stack.providers.utils.memory.chunking import (
    MAX_TOKEN_CHARS,
    Span,
    chunk_spans,
    chunk_text,
    count_tokens,
    token_spans,
)

WORDS = [
    "llama",
    "alpaca",
    "grass",
    "Andes",
    "wool",
    "herd",
    "the",
    "a",
    "of",
    "and",
    "is",
    "to",
    "in",
    "camelid",
    "pasture",
]


def random_text(rng: random.Random, tokens: int) -> str:
    """Words, punctuation, sentence ends, line and paragraph breaks, irregular spacing."""
    parts = []
    for _ in range(tokens):
        parts.append(rng.choice(WORDS) if rng.random() < 0.85 else rng.choice([",", ".", "!", "?", ";", "(", ")"]))
        parts.append(rng.choices([" ", "  ", "\n", "\n\n", " \t", ""], weights=[70, 5, 5, 4, 2, 1])[0])
    return "".join(parts)


def tokens_of(span: Span, tokens: list[Span]) -> list[int]:
    """The indices of the tokens inside a chunk."""
    return [i for i, t in enumerate(tokens) if span.start <= t.start and t.end <= span.end]


def check_chunks(text: str, size: int, overlap: int) -> list[Span]:
    """Assert the chunking invariants; answer the chunks."""
    tokens = token_spans(text)
    chunks = chunk_spans(text, size, overlap)
    assert chunk_text(text, size, overlap) == [text[c.start : c.end] for c in chunks]
    covered = [tokens_of(c, tokens) for c in chunks]
    # Each chunk is a run of whole tokens, starting and ending on token boundaries.
    for chunk, indices in zip(chunks, covered, strict=True):
        assert indices == list(range(indices[0], indices[-1] + 1))
        assert (chunk.start, chunk.end) == (tokens[indices[0]].start, tokens[indices[-1]].end)
        assert 1 <= len(indices) <= size
    # Every token is in some chunk, from the first to the last.
    assert sorted({i for indices in covered for i in indices}) == list(range(len(tokens)))
    for previous, following in itertools.pairwise(covered):
        # Consecutive chunks share exactly `overlap` tokens, and each one moves on.
        assert len(set(previous) & set(following)) == overlap
        assert following[0] == previous[-1] + 1 - overlap and following[-1] > previous[-1]
        # A chunk ends early only in the last quarter of its window.
        assert len(previous) >= max(overlap + 1, size - size // 4)
    return chunks


def test_empty_and_blank_text_have_no_chunks():
    assert chunk_text("", 16, 4) == []
    assert chunk_text(" \n\t\n ", 16, 4) == []


def test_text_shorter_than_a_chunk_is_one_chunk_without_surrounding_whitespace():
    assert chunk_text("\n  Llamas  eat\tgrass.\n\n", 16, 4) == ["Llamas  eat\tgrass."]


def test_chunks_are_exact_substrings_keeping_whitespace():
    text = "One two three.\n\nFour  five\tsix, seven eight nine ten.\nEleven twelve."
    for chunk in chunk_text(text, 6, 2):
        assert chunk in text and chunk == chunk.strip()
    assert "\n\n" in "".join(chunk_text(text, 64, 0))


@pytest.mark.parametrize(("size", "overlap"), [(16, 0), (16, 4), (16, 15), (32, 8), (64, 63), (100, 10), (256, 32)])
def test_every_token_is_covered_with_the_configured_overlap(size, overlap):
    rng = random.Random(size * 1000 + overlap)
    for length in (1, size - 1, size, size + 1, 3 * size, 1000):
        check_chunks(random_text(rng, length), size, overlap)


def test_without_overlap_chunks_partition_the_tokens():
    text = random_text(random.Random(7), 500)
    chunks = check_chunks(text, 20, 0)
    assert sum(count_tokens(text[c.start : c.end]) for c in chunks) == count_tokens(text)


def test_tokens_are_words_and_single_punctuation_marks():
    text = "Don't stop—it's 3.14 (roughly)!"
    assert [text[t.start : t.end] for t in token_spans(text)] == [
        "Don", "'", "t", "stop", "—", "it", "'", "s", "3", ".", "14", "(", "roughly", ")", "!",
    ]  # fmt: skip


def test_ideographs_and_kana_are_a_token_each():
    text = "東京は日本 Tokyo"
    assert [text[t.start : t.end] for t in token_spans(text)] == [
        "東", "京", "は", "日", "本", "Tokyo",
    ]  # fmt: skip


def test_a_very_long_word_counts_as_several_tokens_and_is_split():
    blob = "x" * (MAX_TOKEN_CHARS * 10 + 3)
    assert count_tokens(blob) == 11
    chunks = chunk_text(f"start {blob} end", 4, 1)
    assert all(count_tokens(chunk) <= 4 for chunk in chunks)
    assert max(len(chunk) for chunk in chunks) <= 4 * MAX_TOKEN_CHARS + len("start ")
    check_chunks(f"start {blob} end", 4, 1)


def test_a_chunk_ends_at_a_sentence_end_in_the_last_quarter_of_its_window():
    # 16-token window: the sentence ends after 14 tokens, inside the last quarter (tokens 13-16).
    text = "one two three four five six seven eight nine ten eleven twelve thirteen. fourteen fifteen sixteen seventeen"
    first = chunk_text(text, 16, 2)[0]
    assert first.endswith("thirteen.")


def test_a_paragraph_break_beats_a_later_sentence_end():
    text = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12\n\nw13 w14. w15 w16 w17 w18"
    assert chunk_text(text, 16, 0)[0].endswith("w12")


def test_a_sentence_end_early_in_the_window_is_not_used():
    text = "One two. three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    assert count_tokens(chunk_text(text, 16, 0)[0]) == 16


def test_full_width_sentence_ends_break_without_a_space():
    text = "一二三四五六七八九十一二三。四五六七八九"
    assert chunk_text(text, 16, 0)[0] == "一二三四五六七八九十一二三。"


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (8, 8), (8, 9), (8, -1)])
def test_impossible_settings_are_refused(size, overlap):
    with pytest.raises(ValueError):
        chunk_text("some text", size, overlap)
