"""Training maths (uvit.training): the official warm-up, the EMA update, the per-device batch."""

import pytest
import torch

from uvit.config import get_preset
from uvit.training import TrainingError, ema_update, make_optimizer, per_device_batch, warmup_schedule


def test_schedule_ema_and_batch_helpers():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = warmup_schedule(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    ema = torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    ema_update(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight.detach())
    assert per_device_batch(1024, 8, 2) == 64
    with pytest.raises(TrainingError, match="not divisible"):
        per_device_batch(100, 3, 1)


def test_adamw_takes_the_presets_recipe_over_every_parameter():
    model = torch.nn.Linear(3, 2)
    preset = get_preset("imagenet256-h2")
    optimizer = make_optimizer(model, preset)
    (group,) = optimizer.param_groups
    assert len(group["params"]) == 2  # weight decay on every parameter, biases and pos_embed included
    assert (group["lr"], group["weight_decay"], group["betas"]) == (2e-4, 0.03, (0.99, 0.99))
