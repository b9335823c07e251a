"""Parameter groups and step-based schedules, against hand-computed values."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from frcnn.app.optim import build_optimizer, constant_schedule, cosine_schedule, param_groups, step_schedule


def small_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False), nn.GroupNorm(2, 4),
                        nn.Flatten(), nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)  # a frozen layer
    return net


def test_param_groups_keep_decay_off_norms_and_biases():
    net = small_net()
    decay, no_decay = param_groups(net, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[5].weight)}
    expected = {net[0].bias, net[1].weight, net[1].bias, net[3].weight, net[3].bias, net[5].bias}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}


def test_param_groups_configured_decay_for_norms_and_frozen_left_out():
    net = small_net()
    groups = param_groups(net, weight_decay=0.01, norm_bias_weight_decay=None)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.01]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) == 8


def test_build_optimizer_takes_weight_decay_from_the_partial():
    from functools import partial

    optimizer = build_optimizer(partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4), small_net())
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    assert all(g["lr"] == 0.1 and g["momentum"] == 0.9 for g in optimizer.param_groups)


def lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def sgd(lr: float = 1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_step_schedule_with_warmup():
    # lr 1: warm-up 0.1 -> 1 over 4 steps, then x0.1 at steps 6 and 8.
    got = lrs(step_schedule(sgd(), milestones=[6, 8], gamma=0.1, warmup_steps=4, warmup_start_factor=0.1), 10)
    expected = [0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected))


def test_seed_step_schedule():
    # The seed: 1e-3 -> 1e-4 at 50k steps.
    scheduler = step_schedule(sgd(1e-3))
    factor = scheduler.lr_lambdas[0]
    assert factor(49_999) == 1.0 and math.isclose(factor(50_000), 0.1)


def test_cosine_schedule():
    got = lrs(cosine_schedule(sgd(), total_steps=10, min_factor=0.0, warmup_steps=2, warmup_start_factor=0.0), 11)
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected))


def test_cosine_schedule_needs_a_length():
    with pytest.raises(ValueError, match="needs `steps`"):
        cosine_schedule(sgd(), total_steps=None)


def test_constant_schedule():
    got = lrs(constant_schedule(sgd(2.0), warmup_steps=2, warmup_start_factor=0.5), 4)
    torch.testing.assert_close(torch.tensor(got), torch.tensor([1.0, 1.5, 2.0, 2.0]))


def test_schedule_state_is_plain_data():
    """A checkpoint with the scheduler state loads with weights_only=True, and restores the step."""
    scheduler = step_schedule(sgd(), milestones=[3], warmup_steps=2)
    lrs(scheduler, 4)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = step_schedule(sgd(), milestones=[100], warmup_steps=0)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 4 and resumed.lr_lambdas[0].milestones == [3]
