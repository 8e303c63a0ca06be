"""The filtering functions: which of one prompt's scored generations are kept.

Each function takes the scores of one prompt's generations, in generation order, and answers the indexes of
those kept, in generation order (a filter only drops; it never reorders). Every function keeps nothing from
nothing, and reads only its own parameters of :class:`FilteringParams`:

``none``
    keeps every generation.
``random``
    keeps ``k`` generations chosen uniformly at random, without replacement, whatever their scores (a
    baseline for ``top_k``); all of them when there are no more than ``k``.
``top_k``
    keeps the ``k`` best-scoring generations; all of them when there are no more than ``k``. Of generations
    scoring the same, the earlier is ranked first, so exactly ``min(k, n)`` are kept.
``top_p``
    keeps the best-scoring generations whose share of the score mass reaches ``p``: the scores become weights
    by a softmax at ``temperature`` (``exp(score / temperature)``, normalised), and generations are taken
    best first until their weights add up to ``p`` or more. At least one is kept (``p = 0`` keeps the best
    only) and ``p = 1`` keeps every generation. Generations scoring exactly what the last one taken scores
    are kept too: their weights are the same, so the order between them cannot decide.
``top_k_top_p``
    ``top_k``, then ``top_p`` over those kept (their weights normalised among themselves), as samplers
    apply the two.
``sigmoid``
    keeps each generation on its own with probability ``sigmoid((score - center) / temperature)``: a soft
    threshold at ``center`` whose width is ``temperature``.

``random`` and ``sigmoid`` draw from one generator per request, seeded with ``seed`` when it is given, so a
request with a seed keeps the same generations each time it sees the same scores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from llama_stack.apis.synthetic_data_generation import FilteringFunction, FilteringParams

# A filter: one prompt's scores -> the indexes kept, ascending.
Filter = Callable[[Sequence[float], FilteringParams, random.Random], list[int]]


def keep_all(scores: Sequence[float], params: FilteringParams, rng: random.Random) -> list[int]:
    return list(range(len(scores)))


def keep_random(scores: Sequence[float], params: FilteringParams, rng: random.Random) -> list[int]:
    if len(scores) <= params.k:
        return list(range(len(scores)))
    return sorted(rng.sample(range(len(scores)), params.k))


def _best_first(scores: Sequence[float], indexes: Sequence[int]) -> list[int]:
    return sorted(indexes, key=lambda i: (-scores[i], i))


def _top_k(scores: Sequence[float], indexes: Sequence[int], k: int) -> list[int]:
    return sorted(_best_first(scores, indexes)[:k])


def _softmax(values: Sequence[float], temperature: float) -> list[float]:
    if not values:
        return []
    top = max(values)
    weights = [math.exp((v - top) / temperature) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


def _top_p(scores: Sequence[float], indexes: Sequence[int], p: float, temperature: float) -> list[int]:
    if not indexes or p >= 1.0:
        return sorted(indexes)
    ranked = _best_first(scores, indexes)
    weights = dict(zip(ranked, _softmax([scores[i] for i in ranked], temperature), strict=True))
    kept: list[int] = []
    mass = 0.0
    for i in ranked:
        # The tolerance keeps a sum's rounding from taking one generation more than p asks for.
        if kept and mass >= p - 1e-12:
            break
        kept.append(i)
        mass += weights[i]
    # Ties of the last one taken cannot be told apart from it: keep them as well.
    last = scores[kept[-1]]
    kept += [i for i in ranked[len(kept) :] if scores[i] == last]
    return sorted(kept)


def keep_top_k(scores: Sequence[float], params: FilteringParams, rng: random.Random) -> list[int]:
    return _top_k(scores, range(len(scores)), params.k)


def keep_top_p(scores: Sequence[float], params: FilteringParams, rng: random.Random) -> list[int]:
    return _top_p(scores, range(len(scores)), params.p, params.temperature)


def keep_top_k_top_p(scores: Sequence[float], params: FilteringParams, rng: random.Random) -> list[int]:
    return _top_p(scores, _top_k(scores, range(len(scores)), params.k), params.p, params.temperature)


def sigmoid(x: float) -> float:
    # Written for both signs so that neither overflows math.exp.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def keep_by_sigmoid(scores: Sequence[float], params: FilteringParams, rng: random.Random) -> list[int]:
    return [i for i, s in enumerate(scores) if rng.random() < sigmoid((s - params.center) / params.temperature)]


FILTERS: dict[FilteringFunction, Filter] = {
    "none": keep_all,
    "random": keep_random,
    "top_k": keep_top_k,
    "top_p": keep_top_p,
    "top_k_top_p": keep_top_k_top_p,
    "sigmoid": keep_by_sigmoid,
}


def filter_scores(
    function: FilteringFunction, scores: Sequence[float], params: FilteringParams, rng: random.Random
) -> list[int]:
    """The indexes of the generations ``function`` keeps, ascending."""
    return FILTERS[function](scores, params, rng)
