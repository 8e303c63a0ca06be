"""The DPO loss on fixed log-probabilities (beta, margin, clip, label smoothing), the learning-rate schedule and
the optimizers a job names."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from llama_stack.providers.inline.torch.training.dpo import dpo_loss
from llama_stack.providers.inline.torch.training.loop import learning_rate, optimizer_for
from llama_stack.providers.inline.torch.training.spec import DPOSpec, OptimizerSpec

# Two pairs: log pi(chosen), log pi(rejected), log ref(chosen), log ref(rejected).
CHOSEN = torch.tensor([-10.0, -12.0])
REJECTED = torch.tensor([-14.0, -11.0])
REF_CHOSEN = torch.tensor([-11.0, -12.5])
REF_REJECTED = torch.tensor([-13.0, -12.0])
# h = (chosen - ref_chosen) - (rejected - ref_rejected): the policy moved toward the chosen answer by h nats.
H = [(-10 + 11) - (-14 + 13), (-12 + 12.5) - (-11 + 12)]  # [2.0, -0.5]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def expected(h: float, beta: float, margin: float = 0.0, clip: float = 0.0, smoothing: float = 0.0) -> float:
    z = beta * h - margin
    if clip:
        z = max(-clip, min(clip, z))
    return -(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z)


def losses(**settings: float) -> tuple[list[float], list[float]]:
    loss, reward = dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, DPOSpec(**settings))
    return loss.tolist(), reward.tolist()


def test_the_loss_is_minus_log_sigmoid_of_beta_h():
    loss, reward = losses(beta=0.5)
    assert loss == pytest.approx([expected(h, 0.5) for h in H])
    assert reward == pytest.approx([0.5 * h for h in H])  # the reward margin the logs show
    assert loss[0] < math.log(2) < loss[1]  # preferring the chosen answer lowers the loss; the other way raises it


def test_a_margin_is_what_the_chosen_answer_must_win_by():
    loss, _ = losses(beta=0.5, margin=1.0)
    assert loss == pytest.approx([expected(h, 0.5, margin=1.0) for h in H])
    assert loss[0] == pytest.approx(math.log(2))  # beta * h = 1.0 = margin: no better than a tie


def test_clip_bounds_z_and_stops_its_gradient_beyond():
    chosen = CHOSEN.clone().requires_grad_(True)
    loss, _ = dpo_loss(chosen, REJECTED, REF_CHOSEN, REF_REJECTED, DPOSpec(beta=1.0, clip=0.25))
    assert loss.tolist() == pytest.approx([expected(h, 1.0, clip=0.25) for h in H])
    assert loss.tolist() == pytest.approx([-log_sigmoid(0.25), -log_sigmoid(-0.25)])
    loss.sum().backward()
    assert chosen.grad.tolist() == [0.0, 0.0]  # both pairs are past the clip: nothing pushes them further


def test_label_smoothing_treats_pairs_as_maybe_mislabeled():
    loss, _ = losses(beta=0.5, label_smoothing=0.2)
    assert loss == pytest.approx([expected(h, 0.5, smoothing=0.2) for h in H])
    # Smoothed, a pair the policy prefers by far costs again (about smoothing * z): z is pulled back toward 0.
    far, _ = dpo_loss(
        torch.tensor([0.0]),
        torch.tensor([-1000.0]),
        torch.tensor([0.0]),
        torch.tensor([0.0]),
        DPOSpec(beta=1.0, label_smoothing=0.2),
    )
    assert far.item() == pytest.approx(0.2 * 1000, rel=1e-3)


def test_all_settings_together():
    loss, _ = losses(beta=0.3, margin=0.1, clip=0.5, label_smoothing=0.1)
    assert loss == pytest.approx([expected(h, 0.3, 0.1, 0.5, 0.1) for h in H])


def test_the_learning_rate_decays_from_lr_to_lr_min():
    schedule = [learning_rate(step, 10, 1e-3, 1e-5) for step in range(1, 11)]
    assert schedule[0] == pytest.approx(1e-3)
    assert schedule[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(schedule))
    assert learning_rate(5.5, 10, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)  # the cosine's middle
    assert learning_rate(1, 1, 1e-3, 1e-5) == pytest.approx(1e-3)  # one step: lr


@pytest.mark.parametrize(
    ("kind", "expected_type"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_the_optimizer_is_the_one_named_with_its_settings(kind, expected_type):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = optimizer_for(OptimizerSpec(type=kind, lr=0.1, lr_min=0.0, weight_decay=0.01), [weight])
    assert type(optimizer) is expected_type
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    if kind == "sgd":  # plain SGD: w - lr * (grad + weight_decay * w)
        weight.grad = torch.full((3,), 2.0)
        optimizer.step()
        assert weight.tolist() == pytest.approx([1 - 0.1 * (2.0 + 0.01)] * 3)
