"""A judge's answer to a score, read from the probabilities of its first tokens, never from its text.

Each generated token comes with its ``top_logprobs`` (the judge is asked for 20). A token's text counts as a
word when, with surrounding whitespace (and a SentencePiece ``▁`` or byte-level ``Ġ`` space marker) removed
and lower-cased, it is that word: ``"Yes"``, ``" yes"``, ``"YES"`` and ``"\\nyes"`` are all ``yes``. The
probabilities of the alternatives that count as one word are added up.

yes_no: score = P(yes) / (P(yes) + P(no)) over the first token's alternatives, in [0, 1].

rating: the expected rating over 1..10, renormalised over the rating tokens found, in [1, 10]. Tokenizers
differ in how they write 10:

- one token ``"10"``: every rating is one token, read from the first token's alternatives;
- digits split (``"1"``, ``"0"``: SmolLM2, Llama 3 and many more): the first token ``"1"`` may begin 1 or 10.
  When the judge's (greedy) first token is ``"1"``, its second token's alternatives split that mass: ``"0"``
  makes 10, any other digit makes 11..19 (no rating: left out), and everything else (an end, a full stop,
  the end of the answer, the mass beyond the top alternatives) ends the number at 1. When the judge began with
  another token, what would follow a ``"1"`` is unknown: the ``"1"`` mass is left out, and the rating is the
  expectation over 2..9 (that judge's answer was not 1 or 10 anyway).

Neither word (yes_no) or no rating (rating) among the alternatives is :class:`UnreadableAnswer`: the caller's
502, never a made-up score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llama_stack.apis.inference import TokenLogprob

from .config import JudgeMode

RATINGS = tuple(range(1, 11))
_SPACE_MARKERS = "\u2581\u0120"  # SentencePiece's ▁ and byte-level BPE's Ġ, where a provider shows raw tokens
_DIGITS = frozenset("0123456789")


class UnreadableAnswer(ValueError):
    """The judge's top alternatives hold none of the answer tokens."""


def word(token: str) -> str:
    """A token's text as a word: whitespace and space markers stripped, lower-cased."""
    return token.strip().strip(_SPACE_MARKERS).strip().lower()


def probabilities(entry: TokenLogprob) -> dict[str, float]:
    """Each word among the token's alternatives (the generated token included) and its total probability."""
    by_token = {alternative.token: alternative.logprob for alternative in entry.top_logprobs}
    by_token.setdefault(entry.token, entry.logprob)  # a provider may list the chosen token apart
    words: dict[str, float] = {}
    for token, logprob in by_token.items():
        if math.isfinite(logprob):
            key = word(token)
            words[key] = words.get(key, 0.0) + math.exp(logprob)
    return words


def yes_no_score(tokens: Sequence[TokenLogprob]) -> float:
    first = probabilities(tokens[0])
    yes, no = first.get("yes", 0.0), first.get("no", 0.0)
    if yes + no <= 0.0:
        raise UnreadableAnswer("neither 'yes' nor 'no' is among the first token's top alternatives")
    return yes / (yes + no)


def rating_distribution(tokens: Sequence[TokenLogprob]) -> dict[int, float]:
    """Each rating's probability (not renormalised) as the rules above read it."""
    first = probabilities(tokens[0])
    found = {rating: first[str(rating)] for rating in RATINGS if first.get(str(rating), 0.0) > 0.0}
    one = found.pop(1, 0.0)
    if one <= 0.0:
        return found
    if "10" in first:  # the tokenizer writes 10 as one token: "1" is 1
        found[1] = one
        return found
    if word(tokens[0].token) != "1":  # digits split and the judge did not begin with "1": left out
        return found
    after = probabilities(tokens[1]) if len(tokens) > 1 else {}
    zero = after.get("0", 0.0)
    other_digits = sum(p for w, p in after.items() if w in _DIGITS and w != "0")
    # What is not a digit ends the number at 1, including the mass beyond the alternatives listed.
    ends = max(0.0, 1.0 - zero - other_digits)
    if one * zero > 0.0:
        found[10] = found.get(10, 0.0) + one * zero
    if one * ends > 0.0:
        found[1] = one * ends
    return found


def rating_score(tokens: Sequence[TokenLogprob]) -> float:
    found = rating_distribution(tokens)
    total = sum(found.values())
    if total <= 0.0:
        raise UnreadableAnswer("no rating from 1 to 10 is among the first token's top alternatives")
    return sum(rating * p for rating, p in found.items()) / total


def score(mode: JudgeMode, tokens: Sequence[TokenLogprob]) -> float:
    if not tokens:
        raise UnreadableAnswer("it generated no token")
    return yes_no_score(tokens) if mode == "yes_no" else rating_score(tokens)


def shown(tokens: Sequence[TokenLogprob], count: int = 5) -> str:
    """The judge's first token and its most likely alternatives, for an error message."""
    if not tokens:
        return "no token"
    entry = tokens[0]
    alternatives = sorted(entry.top_logprobs, key=lambda a: a.logprob, reverse=True)[:count]
    listed = ", ".join(f"{a.token!r} {math.exp(a.logprob):.2f}" for a in alternatives) or "none listed"
    return f"first token {entry.token!r} (top alternatives: {listed})"
