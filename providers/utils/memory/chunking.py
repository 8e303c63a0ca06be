"""Chunking: a document's text cut into windows of tokens that overlap, each an exact substring of the text.

Tokens
------
A token here is a word (a run of letters, digits and underscores), a single punctuation or symbol
character, or a single CJK ideograph or kana (scripts written without spaces, where each character is a
word-piece of its own for the usual embedding tokenizers). Whitespace separates tokens and is never one.
A word longer than ``MAX_TOKEN_CHARS`` characters (a hash, a base64 blob, a URL's path) counts as one token
per ``MAX_TOKEN_CHARS`` characters, so no single "word" can blow a chunk past its size.

Why not the embedding model's own tokenizer: a bank's chunk size must mean the same thing whichever model
(local, or behind a remote provider) embeds it, and tokenizing must need no model files. The price is that
sizes are approximate in the model's terms: English prose runs at about 1.1-1.3 word-pieces (BERT-style
tokenizers, all-MiniLM-L6-v2's included) per token counted here. A model truncates what is beyond its own
input limit (256 word-pieces for all-MiniLM-L6-v2), so keep chunks comfortably below it.

Windows
-------
A chunk holds at most ``chunk_size_tokens`` tokens; the next one starts ``overlap_tokens`` tokens before
the previous one ended, so consecutive chunks share exactly ``overlap_tokens`` tokens. Rather than cut
mid-sentence, a chunk ends early at the best break in the last quarter of its window: a paragraph break
(a blank line) first, then a sentence end (``.``, ``!`` or ``?`` followed by whitespace, or a full-width
``。！？``), then a line break. A chunk runs from its first token's first character to its last token's
last character: the text between tokens (whitespace, newlines) is kept as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Longest run of word characters that counts as one token.
MAX_TOKEN_CHARS = 20

# Ideographs (CJK unified, extension A, compatibility; extensions B+ in the supplementary planes), kana.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(
    rf"[{_CJK}]"  # one ideograph or kana
    rf"|(?:(?![{_CJK}])\w){{1,{MAX_TOKEN_CHARS}}}"  # a word, cut every MAX_TOKEN_CHARS characters
    r"|[^\w\s]"  # one punctuation or symbol character
)
_SENTENCE_ENDS = frozenset(".!?")
_FULL_WIDTH_ENDS = frozenset("。！？")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")  # a blank line (maybe holding spaces)

# Break quality, best last: ending a chunk after a token followed by...
_LINE, _SENTENCE, _PARAGRAPH = 1, 2, 3


@dataclass(frozen=True)
class Span:
    """Where a token or a chunk is in the text: ``text[start:end]``."""

    start: int
    end: int


def token_spans(text: str) -> list[Span]:
    """The tokens of ``text`` (see the module's docstring), in order."""
    return [Span(m.start(), m.end()) for m in _TOKEN.finditer(text)]


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


def chunk_spans(text: str, chunk_size_tokens: int, overlap_tokens: int) -> list[Span]:
    """Where each chunk of ``text`` is; see :func:`chunk_text`."""
    if chunk_size_tokens < 1:
        raise ValueError(f"chunk_size_tokens must be at least 1, got {chunk_size_tokens}")
    if not 0 <= overlap_tokens < chunk_size_tokens:
        raise ValueError(
            f"overlap_tokens must be at least 0 and smaller than chunk_size_tokens ({chunk_size_tokens}), "
            f"got {overlap_tokens}"
        )
    # Two int lists rather than a Span per token: a 10 MB document has millions of tokens.
    starts: list[int] = []
    ends: list[int] = []
    for match in _TOKEN.finditer(text):
        starts.append(match.start())
        ends.append(match.end())
    tokens = _Tokens(text, starts, ends)
    count = len(starts)
    chunks: list[Span] = []
    first = 0
    while first < count:
        end = min(first + chunk_size_tokens, count)  # one past the chunk's last token
        if end < count:
            end = tokens.best_end(first, end, overlap_tokens)
        chunks.append(Span(starts[first], ends[end - 1]))
        if end == count:
            break
        first = end - overlap_tokens  # > first: best_end keeps more than overlap_tokens tokens
    return chunks


def chunk_text(text: str, chunk_size_tokens: int, overlap_tokens: int) -> list[str]:
    """The text cut into chunks of at most ``chunk_size_tokens`` tokens, consecutive ones sharing
    ``overlap_tokens``; [] when the text holds no token (empty, or only whitespace)."""
    return [text[span.start : span.end] for span in chunk_spans(text, chunk_size_tokens, overlap_tokens)]


@dataclass(frozen=True)
class _Tokens:
    text: str
    starts: list[int]
    ends: list[int]

    def best_end(self, first: int, end: int, overlap: int) -> int:
        """Where a full window ``[first, end)`` of tokens should end: at its best break in the last quarter,
        else at ``end``. The chunk keeps more than ``overlap`` tokens so that the next one starts further on."""
        size = end - first
        earliest = first + max(overlap + 1, size - size // 4)
        best, best_quality = end, self.break_quality(end)
        # Backwards, so that among breaks of the same quality the longest chunk wins.
        for candidate in range(end - 1, earliest - 1, -1):
            if best_quality == _PARAGRAPH:
                break
            quality = self.break_quality(candidate)
            if quality > best_quality:
                best, best_quality = candidate, quality
        return best

    def break_quality(self, end: int) -> int:
        """How good a place it is to end a chunk after token ``end - 1`` (0: inside a sentence)."""
        last_start, last_end, following = self.starts[end - 1], self.ends[end - 1], self.starts[end]
        gap = self.text[last_end:following]
        if gap and _PARAGRAPH_BREAK.search(gap):
            return _PARAGRAPH
        mark = self.text[last_start]
        # Full-width sentence ends need no space after them: Chinese and Japanese put none.
        if mark in _FULL_WIDTH_ENDS or (gap and mark in _SENTENCE_ENDS):
            return _SENTENCE
        if "\n" in gap:
            return _LINE
        return 0  # inside a sentence, a word (a long word's pieces) or a run of punctuation
