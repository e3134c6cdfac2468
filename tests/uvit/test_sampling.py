"""Samplers and guided generation (uvit.sampling), including parity with the official samplers."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import SAMPLER_STATE_ULPS, SAMPLER_TIME_ULPS, assert_ulps
from parity import SAMPLER_CASES, sampler_golden, sampler_ulps

import uvit.sampling as sampling
from uvit.diffusion import DiscreteSchedule, VPSchedule
from uvit.model import UViT, UViTT2I
from uvit.sampling import (
    SAMPLERS,
    dpm_solver,
    dpm_solver_2m,
    euler_maruyama,
    generate,
    guided_eps_fn,
    logsnr_time_grid,
    order_list,
    time_grid,
)

DISCRETE, VP = DiscreteSchedule(), VPSchedule()

pytestmark = pytest.mark.parity


# ------------------------------------------------------------------ orders and grids (UVIT_FACTS)
def test_order_lists_for_10_25_50_steps() -> None:
    assert order_list(10) == [3, 3, 3, 1]
    assert order_list(25) == [3] * 8 + [1]
    assert order_list(50) == [3] * 16 + [2]
    assert order_list(9) == [3, 3, 2, 1]
    for steps in range(1, 101):
        orders = order_list(steps)
        assert sum(orders) == steps and len(orders) == steps // 3 + 1
    with pytest.raises(ValueError, match="steps"):
        order_list(0)


@pytest.mark.parametrize("steps", [10, 25, 50])
def test_time_grid_is_uniform_from_1_to_0_001(steps: int) -> None:
    grid = time_grid(steps)
    assert grid.shape == (steps + 1,) and grid.dtype == torch.float32
    assert grid[0].item() == 1.0 and grid[-1].item() == pytest.approx(0.001, rel=1e-6)
    torch.testing.assert_close(grid[:-1] - grid[1:], torch.full((steps,), 0.999 / steps), rtol=1e-4, atol=0)


def test_logsnr_grid_is_uniform_in_lambda() -> None:
    grid = logsnr_time_grid(VP, 17)
    assert grid[0].item() == pytest.approx(1.0, abs=1e-6) and grid[-1].item() == pytest.approx(1e-4, rel=1e-2)
    steps = VP.lambda_(grid).diff()
    torch.testing.assert_close(steps, steps.mean().expand(17), rtol=1e-3, atol=0)


class TimeSpy:
    """eps_fn returning zeros that records the network times."""

    def __init__(self) -> None:
        self.t_net: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        assert t_net.shape == (x.shape[0],)
        self.t_net.append(t_net.clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("steps", [10, 25, 50])
def test_discrete_dpm_solver_calls_the_network_at_1000_t_on_the_grid(steps: int) -> None:
    spy = TimeSpy()
    dpm_solver(spy, torch.randn(2, 1, 2, 2), steps=steps, schedule=DISCRETE)
    times = torch.stack([t[0] for t in spy.t_net])
    assert len(times) == steps  # NFE = steps
    assert times[0].item() == 1000.0
    assert bool((times > 1.5).all()), "never evaluated at t = 0.001 (no final denoising)"
    assert bool((times[:-1] > times[1:]).all())
    # The intermediate points of the order-k updates are the skipped grid points.
    torch.testing.assert_close(times, time_grid(steps)[:-1] * 1000, rtol=0, atol=0.05)
    assert any(abs(t - round(t)) > 1e-3 for t in times.tolist()), "fractional times, as the official code"


def test_vp_samplers_call_the_network_at_999_t() -> None:
    spy = TimeSpy()
    dpm_solver(spy, torch.randn(2, 1, 2, 2), steps=10, schedule=VP)
    assert len(spy.t_net) == 10 and spy.t_net[0][0].item() == pytest.approx(999.0)
    spy = TimeSpy()
    euler_maruyama(spy, torch.randn(2, 1, 2, 2), steps=10, schedule=VP, generator=torch.Generator())
    times = torch.stack([t[0] for t in spy.t_net]).double()
    expected = 999 * torch.linspace(1e-3, 1.0, 10, dtype=torch.float64).flip(0)
    torch.testing.assert_close(times, expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ parity with the official code
@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return sampler_golden()


@pytest.mark.parametrize("case,steps", SAMPLER_CASES)
def test_samplers_reproduce_the_official_code(golden: dict[str, torch.Tensor], case: str, steps: int) -> None:
    ulps = sampler_ulps(sampling, golden, case, steps)
    assert ulps["calls"][0] == ulps["calls"][1], f"network calls: ours {ulps['calls'][0]}, official {ulps['calls'][1]}"
    assert_ulps(ulps["t_net"], SAMPLER_TIME_ULPS, f"{case} {steps} network times")
    assert_ulps(ulps["x"], SAMPLER_STATE_ULPS, f"{case} {steps} network inputs")
    assert_ulps(ulps["output"], SAMPLER_STATE_ULPS, f"{case} {steps} output")


# ------------------------------------------------------------------ Gaussian data: exact solution
MU, STD = 0.5, 0.6


def gaussian_eps_fn(schedule):
    """Exact eps for data N(MU, STD^2) under `schedule` (float64 arithmetic)."""
    scale = 1000.0 if isinstance(schedule, DiscreteSchedule) else 999.0

    def eps_fn(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        t = t_net / scale
        alpha = schedule.alpha(t).double().reshape(-1, 1, 1, 1)
        sigma = schedule.sigma(t).double().reshape(-1, 1, 1, 1)
        return sigma * (x - alpha * MU) / (alpha**2 * STD**2 + sigma**2)

    return eps_fn


def marginal(schedule, t: float) -> tuple[float, float]:
    """Mean and std of x_t for the Gaussian data."""
    alpha = schedule.alpha(torch.tensor([t])).double().item()
    sigma = schedule.sigma(torch.tensor([t])).double().item()
    return alpha * MU, math.sqrt(alpha**2 * STD**2 + sigma**2)


def exact_flow(schedule, x_T: torch.Tensor, t_end: float) -> torch.Tensor:
    """The probability-flow ODE from t = 1 to t_end is affine for Gaussian data."""
    (mean_T, std_T), (mean_end, std_end) = marginal(schedule, 1.0), marginal(schedule, t_end)
    return mean_end + std_end / std_T * (x_T - mean_T)


def standard_normal(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("schedule", [DISCRETE, VP], ids=repr)
@pytest.mark.parametrize("sampler", [dpm_solver, dpm_solver_2m], ids=lambda f: f.__name__)
def test_ode_samplers_reach_the_data_mean_and_variance(schedule, sampler) -> None:
    mean_T, std_T = marginal(schedule, 1.0)
    x_T = mean_T + std_T * standard_normal(1000, 0)
    out = sampler(gaussian_eps_fn(schedule), x_T, steps=50, schedule=schedule)
    mean_end, std_end = marginal(schedule, schedule.t_end)
    assert out.mean().item() == pytest.approx(mean_end, abs=0.01)
    # DPM-Solver++(2M) on the time-uniform discrete grid is the least accurate combination.
    assert out.std().item() == pytest.approx(std_end, abs=0.01 if sampler is dpm_solver else 0.03)
    assert (mean_end, std_end) == pytest.approx((MU, STD), abs=0.05)  # t_end is close to the data


def convergence_rates(sampler, schedule, steps: tuple[int, ...], **kwargs) -> list[float]:
    x_T = standard_normal(64, 1)
    reference = exact_flow(schedule, x_T, schedule.t_end)
    errors = [
        (sampler(gaussian_eps_fn(schedule), x_T, steps=n, schedule=schedule, **kwargs) - reference).abs().max().item()
        for n in steps
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), f"error must fall with steps: {errors}"
    return [math.log(a / b) / math.log(m / n) for a, b, n, m in zip(errors, errors[1:], steps, steps[1:])]


@pytest.mark.parametrize("schedule", [DISCRETE, VP], ids=repr)
def test_dpm_solver_fast_converges_at_third_order_on_a_logsnr_grid(schedule) -> None:
    rates = convergence_rates(dpm_solver, schedule, (12, 24, 48), grid="logsnr")
    assert min(rates) > 2.3, rates


@pytest.mark.parametrize("schedule", [DISCRETE, VP], ids=repr)
def test_dpm_solver_2m_converges_at_second_order(schedule) -> None:
    rates = convergence_rates(dpm_solver_2m, schedule, (24, 48, 96), grid="logsnr")
    assert all(1.6 < r < 2.6 for r in rates), rates


def test_official_discrete_configuration_converges() -> None:
    # The time-uniform grid puts a long lambda interval last, which caps the observed order near 1.
    rates = convergence_rates(dpm_solver, DISCRETE, (12, 24, 48))
    assert min(rates) > 1.0, rates


def test_euler_maruyama_reaches_the_data_distribution() -> None:
    mean_T, std_T = marginal(VP, 1.0)
    x_T = mean_T + std_T * standard_normal(2000, 2)
    out = euler_maruyama(gaussian_eps_fn(VP), x_T, steps=100, schedule=VP, generator=torch.Generator().manual_seed(3))
    assert out.mean().item() == pytest.approx(MU, abs=0.04)
    assert out.std().item() == pytest.approx(STD, abs=0.04)
    again = euler_maruyama(gaussian_eps_fn(VP), x_T, steps=100, schedule=VP, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_sampler_argument_errors() -> None:
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="steps"):
        dpm_solver(TimeSpy(), x, steps=0, schedule=DISCRETE)
    with pytest.raises(ValueError, match="steps"):
        euler_maruyama(TimeSpy(), x, steps=1, schedule=VP, generator=None)
    with pytest.raises(TypeError, match="VPSchedule"):
        euler_maruyama(TimeSpy(), x, steps=10, schedule=DISCRETE, generator=None)
    with pytest.raises(ValueError, match="grid"):
        dpm_solver(TimeSpy(), x, steps=5, schedule=DISCRETE, grid="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating-point"):
        dpm_solver(TimeSpy(), torch.zeros(2, 3, dtype=torch.long), steps=5, schedule=DISCRETE)
    with pytest.raises(ValueError, match="eps_fn returned"):
        dpm_solver(lambda x, t: x[:1], x, steps=5, schedule=DISCRETE)


# ------------------------------------------------------------------ guidance with real tiny U-ViTs
@pytest.fixture(scope="module")
def class_model() -> UViT:
    torch.manual_seed(0)
    return UViT(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2, num_classes=11).eval()


@pytest.fixture(scope="module")
def text_model() -> UViTT2I:
    torch.manual_seed(0)
    return UViTT2I(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2, clip_dim=16,
                   num_clip_token=5).eval()  # fmt: skip


def test_batched_guidance_equals_two_pass_guidance(class_model: UViT) -> None:
    g = torch.Generator().manual_seed(0)
    x, t_net = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([1000.0, 523.7, 3.2])
    labels, null = torch.tensor([1, 5, 9]), torch.full((3,), 10)
    with torch.no_grad():
        batched = guided_eps_fn(class_model, cond=labels, uncond=null, cfg_scale=0.4, batched=True)(x, t_net)
        two_pass = guided_eps_fn(class_model, cond=labels, uncond=null, cfg_scale=0.4, batched=False)(x, t_net)
        eps_c, eps_u = class_model(x, t_net, labels), class_model(x, t_net, null)
    torch.testing.assert_close(batched, two_pass, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two_pass, 1.4 * eps_c - 0.4 * eps_u, rtol=1e-5, atol=1e-5)
    assert (eps_c - eps_u).abs().max() > 1e-3  # the guidance term is not vacuous


def test_generate_class_model_batched_equals_two_pass(class_model: UViT) -> None:
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = dict(schedule=DISCRETE, steps=5, cfg_scale=0.4, labels=torch.tensor([2, 7]), null_label=10)
    batched = generate(class_model, x_T, batched_cfg=True, **kwargs)
    two_pass = generate(class_model, x_T, batched_cfg=False, **kwargs)
    plain = generate(class_model, x_T, schedule=DISCRETE, steps=5, labels=torch.tensor([2, 7]))
    assert batched.shape == x_T.shape and not batched.requires_grad
    torch.testing.assert_close(batched, two_pass, rtol=1e-4, atol=1e-4)
    assert (batched - plain).abs().max() > 1e-3


def test_generate_text_model_uses_the_broadcast_empty_context(text_model: UViTT2I) -> None:
    g = torch.Generator().manual_seed(2)
    x_T, context, empty = (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 5, 16, generator=g),
        torch.randn(5, 16),
    )
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(x: torch.Tensor, t_net: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        seen.append((t_net, ctx))
        return text_model(x, t_net, ctx)

    kwargs = dict(schedule=DISCRETE, steps=4, cfg_scale=1.0, context=context, empty_context=empty)
    two_pass = generate(spy, x_T, batched_cfg=False, **kwargs)
    assert len(seen) == 8 and all(t.shape == (2,) for t, _ in seen)
    assert torch.equal(seen[0][1], context) and torch.equal(seen[1][1], empty.expand(2, 5, 16))
    batched = generate(text_model, x_T, batched_cfg=True, **kwargs)
    torch.testing.assert_close(batched, two_pass, rtol=1e-4, atol=1e-4)


def test_generate_unconditional_and_euler_maruyama() -> None:
    torch.manual_seed(0)
    model = UViT(img_size=4, patch_size=2, in_chans=3, embed_dim=16, depth=2, num_heads=2).eval()
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = generate(
        model, x_T, schedule=VP, sampler="euler_maruyama", steps=3, generator=torch.Generator().manual_seed(1)
    )
    again = generate(
        model, x_T, schedule=VP, sampler="euler_maruyama", steps=3, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(out, again) and torch.isfinite(out).all()
    assert generate(model, x_T, schedule=VP, sampler="dpm_solver_2m", steps=3).shape == x_T.shape


def test_generate_errors(class_model: UViT) -> None:
    x_T = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="valid samplers: " + ", ".join(SAMPLERS)):
        generate(class_model, x_T, schedule=DISCRETE, sampler="ddim", labels=labels)
    with pytest.raises(ValueError, match="null_label"):
        generate(class_model, x_T, schedule=DISCRETE, cfg_scale=0.4, labels=labels)
    with pytest.raises(ValueError, match="labels or context"):
        generate(class_model, x_T, schedule=DISCRETE, cfg_scale=0.4)
    with pytest.raises(ValueError, match="labels must be"):
        generate(class_model, x_T, schedule=DISCRETE, labels=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="Generator"):
        generate(class_model, x_T, schedule=VP, sampler="euler_maruyama", labels=labels)
    with pytest.raises(ValueError, match="cfg_scale must be >= 0"):
        generate(class_model, x_T, schedule=DISCRETE, cfg_scale=-1.0, labels=labels, null_label=10)
    with pytest.raises(ValueError, match="steps"):
        generate(class_model, x_T, schedule=DISCRETE, steps=0, labels=labels)
