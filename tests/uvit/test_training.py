"""Training maths (uvit.training): the official warm-up, the EMA update, the per-device batch."""

import pytest
import torch

from uvit.config import build_model, get_preset
from uvit.training import (
    TrainingError,
    adamw_kernel,
    compile_enabled,
    ema_update,
    make_optimizer,
    per_device_batch,
    warmup_schedule,
)


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


def test_adamw_kernel_is_fused_on_cuda_and_foreach_elsewhere():
    assert adamw_kernel("cuda") == adamw_kernel(torch.device("cuda", 1)) == {"fused": True}
    assert adamw_kernel("cpu") == {"foreach": True}
    optimizer = make_optimizer(torch.nn.Linear(3, 2), get_preset("tiny"))  # the parameters' device by default
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]


def test_foreach_adamw_on_cpu_gives_the_for_loops_weights_bit_for_bit():
    """The CPU kernel `make_optimizer` picks keeps the for-loop's numbers (a resumed or older run's)."""
    preset = get_preset("tiny", {"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2})
    t = preset.train
    weights = {}
    for name in ("for-loop", "make_optimizer"):
        torch.manual_seed(0)
        model = build_model(preset)
        if name == "for-loop":
            optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                          betas=tuple(t.betas), foreach=False)  # fmt: skip
        else:
            optimizer = make_optimizer(model, preset)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["for-loop"], weights["make_optimizer"])


def test_compile_auto_compiles_on_cuda_only():
    assert compile_enabled("auto", "cuda") and not compile_enabled("auto", "cpu")
    assert compile_enabled(True, "cpu") and not compile_enabled(False, "cuda")
    assert get_preset("imagenet256-h2").train.compile == "auto"
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        compile_enabled("yes", "cpu")
