"""Schedules, forward noising, training loss, condition dropout and guidance (uvit.diffusion)."""

from __future__ import annotations

import math

import pytest
import torch

from uvit.config import DiffusionConfig, get_preset
from uvit.diffusion import (
    DiscreteSchedule,
    VPSchedule,
    drop_condition,
    forward_noise,
    from_config,
    guided_eps,
    stable_diffusion_betas,
    training_loss,
)

N = 1000

pytestmark = pytest.mark.parity


# ------------------------------------------------------------------ schedules against closed forms
def test_default_betas_are_stable_diffusion_scaled_linear() -> None:
    schedule = DiscreteSchedule()
    root = [0.00085**0.5 + i * (0.012**0.5 - 0.00085**0.5) / 999 for i in range(N)]
    expected = torch.tensor(root, dtype=torch.float64) ** 2
    assert schedule.betas.dtype == torch.float64 and schedule.num_timesteps == N
    torch.testing.assert_close(schedule.betas, expected, rtol=1e-12, atol=0)
    assert schedule.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(0.012, rel=1e-12)


def test_alpha_bar_is_the_product_of_one_minus_beta() -> None:
    schedule = DiscreteSchedule()
    assert schedule.alpha_bar.shape == (N + 1,) and schedule.alpha_bar[0] == 1.0
    for n in (1, 2, 10, 500, 1000):
        expected = math.prod(1.0 - b for b in schedule.betas[:n].tolist())
        assert schedule.alpha_bar[n].item() == pytest.approx(expected, rel=1e-12)
    assert schedule.alpha_bar_at(torch.tensor([0, 1000])).tolist() == [1.0, schedule.alpha_bar[-1].item()]
    with pytest.raises(ValueError, match="0..1000"):
        schedule.alpha_bar_at(torch.tensor([1001]))
    with pytest.raises(TypeError, match="integer"):
        schedule.alpha_bar_at(torch.tensor([1.0]))


def test_discrete_log_alpha_is_piecewise_linear_over_knots_n_over_N() -> None:
    schedule = DiscreteSchedule()
    knots_t = torch.arange(1, N + 1, dtype=torch.float64) / N
    # At the knots, alpha_t^2 is the exact product alpha_bar_n (float32 accuracy).
    alpha_sq = schedule.alpha(knots_t.float()).double() ** 2
    torch.testing.assert_close(alpha_sq, schedule.alpha_bar[1:], rtol=2e-5, atol=0)
    # Midway between two knots log alpha is the average (linear), and below 1/N it extrapolates.
    log_knots = 0.5 * torch.log(schedule.alpha_bar[1:])
    mid = schedule.log_alpha(((knots_t[:-1] + knots_t[1:]) / 2).float()).double()
    torch.testing.assert_close(mid, (log_knots[:-1] + log_knots[1:]) / 2, rtol=0, atol=2e-6)
    at_zero = schedule.log_alpha(torch.tensor([0.0])).double()
    torch.testing.assert_close(at_zero, 2 * log_knots[:1] - log_knots[1:2], rtol=0, atol=1e-7)
    assert schedule.log_alpha(torch.tensor([0.5])).dtype == torch.float32


def test_vp_schedule_closed_forms() -> None:
    schedule = VPSchedule()
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    alpha_bar = torch.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
    torch.testing.assert_close(schedule.alpha(t) ** 2, alpha_bar, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.alpha_bar(t), alpha_bar, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.beta(t), 0.1 + t * 19.9, rtol=1e-12, atol=0)
    inner = t[1:]
    torch.testing.assert_close(schedule.sigma(inner) ** 2, 1 - alpha_bar[1:], rtol=1e-9, atol=0)


@pytest.mark.parametrize("schedule", [DiscreteSchedule(), VPSchedule()], ids=repr)
def test_lambda_is_decreasing_and_inverse_lambda_inverts_it(schedule) -> None:
    t = torch.linspace(1e-3, 1.0, 2001)  # float32 like the sampler
    lambda_ = schedule.lambda_(t)
    assert bool((lambda_[1:] < lambda_[:-1]).all())
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-6)
    torch.testing.assert_close(lambda_, torch.log(alpha) - torch.log(sigma), rtol=0, atol=2e-5)
    torch.testing.assert_close(schedule.inverse_lambda(lambda_), t, rtol=0, atol=5e-5)


def test_net_time_is_t_times_N_for_discrete_and_999_t_for_vp() -> None:
    t = torch.tensor([1.0, 0.5, 0.001])
    assert DiscreteSchedule().net_time(t).tolist() == pytest.approx([1000.0, 500.0, 1.0])
    assert VPSchedule().net_time(t).tolist() == pytest.approx([999.0, 499.5, 0.999])


def test_from_config_and_custom_betas() -> None:
    discrete = from_config(get_preset("imagenet256-h2").diffusion)
    assert isinstance(discrete, DiscreteSchedule)
    torch.testing.assert_close(discrete.betas, stable_diffusion_betas(), rtol=0, atol=0)
    vp = from_config(get_preset("cifar10-s2").diffusion)
    assert isinstance(vp, VPSchedule) and (vp.beta_min, vp.beta_max) == (0.1, 20.0)
    small = from_config(DiffusionConfig(schedule="discrete", num_timesteps=10))
    assert small.num_timesteps == 10 and small.net_time(torch.tensor(1.0)).item() == 10.0
    linear = DiscreteSchedule(torch.linspace(1e-4, 2e-2, 50, dtype=torch.float64))
    assert linear.num_timesteps == 50 and linear.t_end == pytest.approx(0.02)
    for bad in (torch.tensor([0.1, 1.0]), torch.tensor([0.1]), torch.zeros(2, 2) + 0.1):
        with pytest.raises(ValueError, match="betas"):
            DiscreteSchedule(bad)
    with pytest.raises(ValueError, match="beta_min"):
        VPSchedule(beta_min=20.0, beta_max=0.1)


# ------------------------------------------------------------------ forward noising and loss
class SpyModel:
    """Records what the training loss gives the network and returns a constant eps."""

    def __init__(self, output: float = 0.0):
        self.output = output
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, xt: torch.Tensor, t_net: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((xt.clone(), t_net.clone(), None if cond is None else cond.clone()))
        return torch.full_like(xt, self.output)


def test_forward_noise_per_sample() -> None:
    x0, eps = torch.ones(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    xt = forward_noise(x0, eps, torch.tensor([0.5, 1.0]), torch.tensor([0.25, 0.0]))
    assert xt[0].unique().tolist() == [1.0] and xt[1].unique().tolist() == [1.0]
    with pytest.raises(ValueError, match="shape"):
        forward_noise(x0, eps[:1], torch.ones(2), torch.ones(2))


def test_discrete_training_loss_sees_integer_timesteps_1_to_1000() -> None:
    schedule = DiscreteSchedule()
    x0 = torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    spy = SpyModel()
    loss = training_loss(spy, x0, None, schedule, torch.Generator().manual_seed(1))
    xt, t_net, _ = spy.calls[0]
    assert t_net.shape == (4096,) and t_net.is_floating_point()
    assert bool((t_net == t_net.round()).all()), "the network must see integer timesteps"
    assert t_net.min().item() >= 1 and t_net.max().item() <= N
    assert t_net.min().item() <= 5 and t_net.max().item() >= 995  # both ends drawn
    assert t_net.mean().item() == pytest.approx(500.5, abs=15)
    # Replay the documented draw order (time, then eps) to check x_n and the loss exactly.
    g = torch.Generator().manual_seed(1)
    n = torch.randint(1, N + 1, (4096,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    assert torch.equal(n.float(), t_net)
    alpha_bar = schedule.alpha_bar[n].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps)
    torch.testing.assert_close(loss, eps.pow(2).flatten(1).mean(1).mean())


def test_vp_training_loss_sees_999_t_with_t_uniform() -> None:
    schedule = VPSchedule()
    x0 = torch.randn(4096, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    spy = SpyModel(output=1.0)
    loss = training_loss(spy, x0, None, schedule, torch.Generator().manual_seed(2))
    xt, t_net, _ = spy.calls[0]
    g = torch.Generator().manual_seed(2)
    t = torch.rand(4096, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(t_net, 999 * t)
    assert t_net.max().item() < 999 and t_net.min().item() >= 0
    assert (t_net / 999).mean().item() == pytest.approx(0.5, abs=0.02)
    alpha_bar = torch.exp(-(0.1 * t + 9.95 * t**2)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps)
    torch.testing.assert_close(loss, (eps - 1).pow(2).flatten(1).mean(1).mean())


def test_training_loss_is_zero_for_the_true_eps_and_passes_the_condition() -> None:
    schedule = DiscreteSchedule()
    x0 = torch.zeros(8, 1, 2, 2)  # x_n = sqrt(1 - alpha_bar_n) eps, so eps is recoverable
    labels = torch.arange(8)

    def oracle(xt: torch.Tensor, t_net: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert torch.equal(y, labels)
        alpha_bar = schedule.alpha_bar[t_net.long()].float().reshape(-1, 1, 1, 1)
        return xt / (1 - alpha_bar).sqrt()

    loss = training_loss(oracle, x0, labels, schedule, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="does not match"):
        training_loss(lambda x, t: x[:, :0], x0, None, schedule)


# ------------------------------------------------------------------ condition dropout and guidance
def test_drop_condition_labels_rate_and_null_class() -> None:
    labels = torch.randint(0, 1000, (20000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_condition(labels, 1000, 0.15, torch.Generator().manual_seed(1))
    is_null = dropped == 1000
    assert is_null.float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(dropped[~is_null], labels[~is_null])
    assert drop_condition(labels, 1000, 0.0, None) is labels
    assert bool((drop_condition(labels, 1000, 1.0, None) == 1000).all())
    again = drop_condition(labels, 1000, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(again, dropped)  # the injected generator is the only random source
    with pytest.raises(ValueError, match="p_uncond"):
        drop_condition(labels, 1000, 1.5, None)
    with pytest.raises(ValueError, match="integer labels"):
        drop_condition(labels.float(), 1000, 0.1, None)


def test_drop_condition_text_uses_the_empty_caption_embedding() -> None:
    context = torch.randn(4000, 7, 5, generator=torch.Generator().manual_seed(0))
    empty = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    dropped = drop_condition(context, empty, 0.1, torch.Generator().manual_seed(2))
    is_empty = (dropped == empty).all(dim=(1, 2))
    unchanged = (dropped == context).all(dim=(1, 2))
    assert bool((is_empty ^ unchanged).all()), "each sample keeps its context or takes the whole empty one"
    assert is_empty.float().mean().item() == pytest.approx(0.1, abs=0.015)
    with pytest.raises(ValueError, match="null condition"):
        drop_condition(context, torch.zeros(77, 768), 0.1, None)


def test_training_loss_drops_conditions_with_p_uncond() -> None:
    spy = SpyModel()
    labels = torch.zeros(4000, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4000, 1, 1, 1)
    training_loss(spy, x0, labels, DiscreteSchedule(), generator, p_uncond=0.1, null_cond=1000)
    seen = spy.calls[0][2]
    assert set(seen.unique().tolist()) == {0, 1000}
    assert (seen == 1000).float().mean().item() == pytest.approx(0.1, abs=0.015)
    with pytest.raises(ValueError, match="null_cond"):
        training_loss(spy, torch.zeros(2, 1, 1, 1), labels[:2], DiscreteSchedule(), None, p_uncond=0.1)


def test_guided_eps_official_convention() -> None:
    eps_c, eps_u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(guided_eps(eps_c, eps_u, 0.0), eps_c)
    # s = 0.4 is w = 1.4 in the usual eps_u + w (eps_c - eps_u) form.
    torch.testing.assert_close(guided_eps(eps_c, eps_u, 0.4), eps_u + 1.4 * (eps_c - eps_u))
    torch.testing.assert_close(guided_eps(eps_c, eps_u, 1.0), torch.tensor([1.5, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        guided_eps(eps_c, eps_u, float("nan"))
