"""The filtering functions' exact semantics on fixed scores (providers/inline/synthetic_data/filtering.py)."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from llama_stack.apis.synthetic_data_generation import FilteringParams
from llama_stack.providers.inline.synthetic_data.filtering import FILTERS, filter_scores, sigmoid


def kept(function, scores, seed=0, **params):
    return filter_scores(function, scores, FilteringParams(**params), random.Random(seed))


@pytest.mark.parametrize("function", sorted(FILTERS))
def test_no_generations_keep_nothing(function):
    assert kept(function, []) == []


def test_none_keeps_everything_in_order():
    assert kept("none", [0.3, -2.0, 0.3, 9.0]) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------------- top_k


def test_top_k_keeps_the_k_best_in_generation_order():
    assert kept("top_k", [0.1, 0.9, 0.5, 0.7], k=2) == [1, 3]


def test_top_k_ties_go_to_the_earlier_generation():
    assert kept("top_k", [0.5, 0.9, 0.5, 0.5], k=2) == [0, 1]
    assert kept("top_k", [0.2, 0.2, 0.2], k=1) == [0]


def test_top_k_larger_than_the_candidates_keeps_them_all():
    assert kept("top_k", [0.4, 0.1], k=5) == [0, 1]


def test_top_k_of_one_keeps_the_best_even_when_negative():
    assert kept("top_k", [-3.0, -1.0, -2.0], k=1) == [1]


# ---------------------------------------------------------------------------------------------------- top_p


def weights(scores, temperature=1.0):
    exps = [math.exp(s / temperature) for s in scores]
    return [e / sum(exps) for e in exps]


def test_top_p_takes_the_best_until_their_mass_reaches_p():
    scores = [1.0, 3.0, 2.0, 0.0]
    w = weights(scores)  # best first: index 1 (0.64), 2 (0.24), 0 (0.09), 3 (0.03)
    assert kept("top_p", scores, p=w[1] - 0.01) == [1]
    assert kept("top_p", scores, p=w[1] + 0.01) == [1, 2]
    assert kept("top_p", scores, p=w[1] + w[2] + 0.01) == [0, 1, 2]


def test_top_p_stops_exactly_at_p():
    scores = [0.0, 0.0, math.log(2.0)]  # weights 1/4, 1/4, 1/2
    assert kept("top_p", scores, p=0.5) == [2]


def test_top_p_at_its_bounds():
    scores = [0.2, 0.8, -50.0, 0.5]
    assert kept("top_p", scores, p=0.0) == [1]  # the best only
    assert kept("top_p", scores, p=1.0) == [0, 1, 2, 3]  # everything, even weights that round to 0


def test_top_p_keeps_the_ties_of_the_last_one_taken():
    scores = [0.9, 0.5, 0.5, 0.1]
    assert kept("top_p", scores, p=0.0) == [0]
    # p just above the best's weight: one of the two 0.5s is needed, so both are kept (their weights are equal).
    assert kept("top_p", scores, p=weights(scores)[0] + 0.001) == [0, 1, 2]


def test_top_p_temperature_sharpens_the_weights():
    scores = [1.0, 0.9]
    assert kept("top_p", scores, p=0.9, temperature=1.0) == [0, 1]  # weights 0.52 / 0.48
    assert kept("top_p", scores, p=0.9, temperature=0.01) == [0]  # weights 0.99995 / 0.00005


def test_top_p_of_one_generation_keeps_it():
    assert kept("top_p", [-7.0], p=0.0) == [0]


# ----------------------------------------------------------------------------------------------- top_k_top_p


def test_top_k_top_p_applies_top_p_among_the_top_k():
    scores = [3.0, 2.9, 0.0, 2.8]
    # top_k=2 keeps 0 and 1, whose weights among themselves are ~0.52 / 0.48.
    assert kept("top_k_top_p", scores, k=2, p=0.5) == [0]
    assert kept("top_k_top_p", scores, k=2, p=0.9) == [0, 1]
    # Over all four, p=0.9 would need index 3 as well.
    assert kept("top_p", scores, p=0.9) == [0, 1, 3]


def test_top_k_top_p_bounds():
    scores = [0.1, 0.4, 0.3]
    assert kept("top_k_top_p", scores, k=10, p=1.0) == [0, 1, 2]
    assert kept("top_k_top_p", scores, k=1, p=1.0) == [1]
    assert kept("top_k_top_p", scores, k=3, p=0.0) == [1]


# ---------------------------------------------------------------------------------------------------- random


def test_random_keeps_k_whatever_the_scores():
    scores = [float(i) for i in range(10)]
    for seed in range(20):
        chosen = kept("random", scores, seed=seed, k=3)
        assert len(chosen) == 3 and len(set(chosen)) == 3 and chosen == sorted(chosen)
    # Every generation has the same chance: over many draws, the worst is kept about as often as the best.
    counts = [0] * 10
    for seed in range(2000):
        for i in kept("random", scores, seed=seed, k=3):
            counts[i] += 1
    assert all(450 < c < 750 for c in counts), counts  # 600 expected for each


def test_random_is_repeatable_with_a_seed_and_varies_without():
    scores = [0.0] * 12
    assert kept("random", scores, seed=7, k=4) == kept("random", scores, seed=7, k=4)
    assert len({tuple(kept("random", scores, seed=s, k=4)) for s in range(10)}) > 1


def test_random_with_k_at_least_the_candidates_keeps_all():
    assert kept("random", [0.5, 0.1], k=2) == [0, 1]
    assert kept("random", [0.5, 0.1], k=9) == [0, 1]


# ---------------------------------------------------------------------------------------------------- sigmoid


def test_sigmoid_with_a_narrow_width_is_a_threshold_at_center():
    scores = [0.2, 0.49, 0.51, 0.9, 0.6]
    for seed in range(20):
        assert kept("sigmoid", scores, seed=seed, center=0.5, temperature=1e-4) == [2, 3, 4]


def test_sigmoid_keeps_each_generation_with_its_probability():
    # score 1 at center 0 and width 1: kept with probability sigmoid(1) = 0.731.
    draws = [kept("sigmoid", [1.0] * 100, seed=seed, center=0.0, temperature=1.0) for seed in range(50)]
    share = sum(len(d) for d in draws) / 5000
    assert abs(share - sigmoid(1.0)) < 0.03
    # At the center itself: one in two.
    share = sum(len(kept("sigmoid", [0.5] * 100, seed=s, center=0.5)) for s in range(50)) / 5000
    assert abs(share - 0.5) < 0.03


def test_sigmoid_is_safe_far_from_center():
    assert sigmoid(-1e6) == 0.0 and sigmoid(1e6) == 1.0
    assert kept("sigmoid", [-1e6, 1e6], center=0.0, temperature=1e-3) == [1]


def test_sigmoid_is_repeatable_with_a_seed():
    scores = [0.1 * i for i in range(10)]
    assert kept("sigmoid", scores, seed=3) == kept("sigmoid", scores, seed=3)


# ------------------------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"k": 0}, "k"),
        ({"p": 1.5}, "p"),
        ({"p": -0.1}, "p"),
        ({"temperature": 0}, "temperature"),
        ({"seed": -1}, "seed"),
    ],
)
def test_parameters_out_of_range_are_refused(params, field):
    with pytest.raises(ValidationError) as caught:
        FilteringParams(**params)
    assert caught.value.errors()[0]["loc"] == (field,)
