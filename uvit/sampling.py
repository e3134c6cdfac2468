"""Samplers as pure functions of (eps function, noise, schedule, steps), random source injected.

`eps_fn(x, t_net)` is the (possibly guided) network: x (B, C, H, W), t_net (B,) the network's time
input exactly as the official code passes it (`schedule.net_time(t)`: t * 1000 for the discrete
schedule, fractional, first call at 1000.0 and never at t = 0.001; 999 t for the VP-SDE).

- `dpm_solver`: with a `DiscreteSchedule`, the official DPM-Solver++ (data prediction) singlestep
  "fast" order-3 method on the time-uniform grid `linspace(1, 0.001, steps + 1)`, orders
  `order_list(steps)`, an order-k update from grid[i] to grid[i+k] through the skipped grid
  points, no final denoising (NFE = steps). With a `VPSchedule`, the original DPM-Solver-fast
  (noise prediction) on K = steps // 3 + 1 intervals uniform in lambda from t = 1 to 1e-4.
- `dpm_solver_2m`: multistep DPM-Solver++(2M) (first step of order 1), NFE = steps; by default as
  the official multistep loop runs it (time-uniform grid for the discrete schedule, every later step
  of order 2).
- `dpm_solver_3m`: multistep DPM-Solver++(3M), NFE = steps, the fast sampler: by default on a grid
  uniform in lambda (logSNR), with lower-order final steps (the last of order 1, the one before of
  order 2) at 5 steps or fewer only, what measured best (BENCHMARKS.md, sampler accuracy). Its
  third-order update is Taylor-exact (see `multistep_update`). Both multistep samplers take
  `grid` = "time_uniform" | "logsnr" | "time_quadratic" and `lower_order_final`.
- `euler_maruyama`: the reverse VP-SDE as the official `sde.euler_maruyama` (pixel models).

`guided_eps_fn` builds `eps_fn` from a U-ViT with classifier-free guidance (two passes or one pass
of a doubled batch) and `generate` runs a whole guided sampling in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from uvit.diffusion import DiscreteSchedule, Schedule, VPSchedule, guided_eps

__all__ = [
    "EpsFn",
    "SAMPLERS",
    "order_list",
    "time_grid",
    "logsnr_time_grid",
    "time_quadratic_grid",
    "GRIDS",
    "multistep_orders",
    "multistep_time_grid",
    "multistep_update",
    "dpm_solver",
    "dpm_solver_2m",
    "dpm_solver_3m",
    "euler_maruyama",
    "sample",
    "guided_eps_fn",
    "generate",
]

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,C,H,W), t_net (B,)) -> eps
Grid = Literal["time_uniform", "logsnr", "time_quadratic"]
GRIDS: tuple[str, ...] = ("time_uniform", "logsnr", "time_quadratic")
LOWER_ORDER_FINAL_MAX_STEPS = 5  # dpm_solver_3m's default: lower-order final steps at <= 5 steps only


def _check_steps(steps: int, minimum: int = 1) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < minimum:
        raise ValueError(f"steps must be an integer >= {minimum}, got {steps!r}")


def order_list(steps: int) -> list[int]:
    """Solver orders of DPM-Solver-fast for NFE = `steps`: K = steps//3 + 1 steps, lower orders last."""
    _check_steps(steps)
    num_intervals = steps // 3 + 1
    if steps % 3 == 0:
        return [3] * (num_intervals - 2) + [2, 1]
    if steps % 3 == 1:
        return [3] * (num_intervals - 1) + [1]
    return [3] * (num_intervals - 1) + [2]


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """The official time-uniform grid `linspace(t_start, t_end, steps + 1)` (float32)."""
    _check_steps(steps)
    return torch.linspace(t_start, t_end, steps + 1)


def logsnr_time_grid(
    schedule: Schedule, num_intervals: int, t_start: float = 1.0, t_end: float | None = None
) -> torch.Tensor:
    """Times of `num_intervals` intervals uniform in lambda from `t_start` to `t_end` (float32)."""
    _check_steps(num_intervals)
    t_end = schedule.t_end if t_end is None else t_end
    lambda_start = schedule.lambda_(torch.tensor(t_start)).item()
    lambda_end = schedule.lambda_(torch.tensor(t_end)).item()
    return schedule.inverse_lambda(torch.linspace(lambda_start, lambda_end, num_intervals + 1)).reshape(-1)


def time_quadratic_grid(steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """`steps` intervals uniform in sqrt(t) from `t_start` to `t_end` (DDIM's quadratic grid, float32).

    Computed in float64 from the exact square roots (the official `get_time_steps('time_quadratic')`
    snaps the same points to a 1e7-point table); the endpoints are exactly `t_start` and `t_end`.
    """
    _check_steps(steps)
    if not 0 < t_end < t_start:
        raise ValueError(f"need 0 < t_end < t_start, got t_start={t_start}, t_end={t_end}")
    roots = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=torch.float64)
    times = roots**2
    times[0], times[-1] = t_start, t_end
    return times.float()


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1)."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class _Solver:
    """The model output (eps or x0) and the DPM-Solver coefficients on one schedule."""

    def __init__(self, eps_fn: EpsFn, schedule: Schedule, predict_x0: bool):
        self.eps_fn = eps_fn
        self.schedule = schedule
        self.predict_x0 = predict_x0

    def model_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps, or x0 = (x - sigma_t eps) / alpha_t for the data-prediction (++) form; t (B,)."""
        eps = self.eps_fn(x, self.schedule.net_time(t))  # (B, C, H, W)
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn returned {tuple(eps.shape)} for x of shape {tuple(x.shape)}")
        if not self.predict_x0:
            return eps
        alpha_t, sigma_t = self.schedule.alpha(t), self.schedule.sigma(t)
        return (x - _bcast(sigma_t, x) * eps) / _bcast(alpha_t, x)

    def coefficients(self, s: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ratio, scale) of x_u = ratio * x_s - scale * (...): data form (sigma_u/sigma_s, alpha_u),
        noise form (alpha_u/alpha_s, sigma_u)."""
        ns = self.schedule
        if self.predict_x0:
            return ns.sigma(u) / ns.sigma(s), ns.alpha(u)
        return torch.exp(ns.log_alpha(u) - ns.log_alpha(s)), ns.sigma(u)

    def singlestep_update(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        t: torch.Tensor,
        order: int,
        r1: float | torch.Tensor | None = None,
        r2: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DPM-Solver(++)-k step from s to t (B,) with intermediate points at lambda ratios r1, r2.

        Both forms share one set of formulas with z = -h (data form) or z = h (noise form), h the
        lambda step: phi_1(z) = expm1(z), phi_2(z) = expm1(z) / z - 1.
        """
        ns = self.schedule
        lambda_s = ns.lambda_(s)
        h = ns.lambda_(t) - lambda_s  # (B,)
        z = -h if self.predict_x0 else h
        model_s = self.model_output(x, s)
        ratio_t, scale_t = self.coefficients(s, t)
        x_t = _bcast(ratio_t, x) * x - _bcast(scale_t * torch.expm1(z), x) * model_s
        if order == 1:
            return x_t
        r1 = (1.0 / 3.0 if order == 3 else 0.5) if r1 is None else r1
        s1 = ns.inverse_lambda(lambda_s + r1 * h)
        ratio_s1, scale_s1 = self.coefficients(s, s1)
        x_s1 = _bcast(ratio_s1, x) * x - _bcast(scale_s1 * torch.expm1(r1 * z), x) * model_s
        model_s1 = self.model_output(x_s1, s1)
        if order == 2:
            return x_t - (0.5 / r1) * _bcast(scale_t * torch.expm1(z), x) * (model_s1 - model_s)
        if order != 3:
            raise ValueError(f"solver order must be 1, 2 or 3, got {order}")
        r2 = 2.0 / 3.0 if r2 is None else r2
        s2 = ns.inverse_lambda(lambda_s + r2 * h)
        ratio_s2, scale_s2 = self.coefficients(s, s2)
        phi_2_s2 = torch.expm1(r2 * z) / (r2 * z) - 1.0
        x_s2 = (
            _bcast(ratio_s2, x) * x
            - _bcast(scale_s2 * torch.expm1(r2 * z), x) * model_s
            - (r2 / r1) * _bcast(scale_s2 * phi_2_s2, x) * (model_s1 - model_s)
        )
        model_s2 = self.model_output(x_s2, s2)
        phi_2 = torch.expm1(z) / z - 1.0
        return x_t - (1.0 / r2) * _bcast(scale_t * phi_2, x) * (model_s2 - model_s)


def _check_x(x_T: torch.Tensor) -> None:
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.ndim < 2:
        raise ValueError("x_T must be a floating-point tensor (B, ...)")


def _grid_for(
    schedule: Schedule, grid: Grid | None, num_intervals: int, t_start: float, t_end: float | None
) -> torch.Tensor:
    grid = grid or ("time_uniform" if isinstance(schedule, DiscreteSchedule) else "logsnr")
    t_end = schedule.t_end if t_end is None else t_end
    if grid == "time_uniform":
        return time_grid(num_intervals, t_start, t_end)
    if grid == "logsnr":
        return logsnr_time_grid(schedule, num_intervals, t_start, t_end)
    if grid == "time_quadratic":
        return time_quadratic_grid(num_intervals, t_start, t_end)
    raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(map(repr, GRIDS))}")


@torch.no_grad()
def dpm_solver(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    steps: int,
    schedule: Schedule,
    predict_x0: bool | None = None,
    grid: Grid | None = None,
    t_start: float = 1.0,
    t_end: float | None = None,
) -> torch.Tensor:
    """DPM-Solver-fast with NFE = `steps`, as the official code runs it for this schedule.

    Defaults: discrete -> DPM-Solver++ (`predict_x0=True`), `grid="time_uniform"` of steps + 1 points
    (an order-k step spans k grid intervals, its intermediate points are the skipped grid points);
    VP -> DPM-Solver (`predict_x0=False`), `grid="logsnr"` of K + 1 points (one step per interval,
    intermediate points at lambda ratios 1/3, 2/3 or 1/2). Ends at `t_end` (schedule.t_end) without
    a final denoising step.
    """
    _check_steps(steps)
    _check_x(x_T)
    predict_x0 = isinstance(schedule, DiscreteSchedule) if predict_x0 is None else predict_x0
    grid = grid or ("time_uniform" if isinstance(schedule, DiscreteSchedule) else "logsnr")
    orders = order_list(steps)
    solver = _Solver(eps_fn, schedule, predict_x0)
    batch, device = x_T.shape[0], x_T.device
    x = x_T
    if grid == "time_uniform":
        times = _grid_for(schedule, grid, steps, t_start, t_end).to(device)  # (steps+1,)
        lambdas = schedule.lambda_(times)
        i = 0
        for order in orders:
            h = lambdas[i + order] - lambdas[i]
            r1 = (lambdas[i + 1] - lambdas[i]) / h if order >= 2 else None
            r2 = (lambdas[i + 2] - lambdas[i]) / h if order >= 3 else None
            s, t = times[i].expand(batch), times[i + order].expand(batch)  # (B,)
            x = solver.singlestep_update(x, s, t, order, r1, r2)
            i += order
    else:
        times = _grid_for(schedule, grid, len(orders), t_start, t_end).to(device)  # (K+1,)
        for i, order in enumerate(orders):
            x = solver.singlestep_update(x, times[i].expand(batch), times[i + 1].expand(batch), order)
    return x


def multistep_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Orders of the `steps` multistep updates: warm-up min(order, i + 1) (the history is short), and
    with `lower_order_final` the last updates at min(order, steps - i) (the last of order 1)."""
    _check_steps(steps)
    if order not in (1, 2, 3):
        raise ValueError(f"multistep order must be 1, 2 or 3, got {order!r}")
    orders = [min(order, i + 1) for i in range(steps)]
    if lower_order_final:
        orders = [min(o, steps - i) for i, o in enumerate(orders)]
    return orders


def multistep_time_grid(
    schedule: Schedule, grid: Grid | None, steps: int, t_start: float = 1.0, t_end: float | None = None
) -> torch.Tensor:
    """The multistep samplers' times (steps + 1,) from `t_start` to `t_end` (default schedule.t_end);
    grid None: the schedule's official one. A logSNR grid has its endpoints set to exactly `t_start`
    and `t_end` (inverse_lambda rounds them, e.g. to 0.99998)."""
    _check_steps(steps)
    t_end = schedule.t_end if t_end is None else t_end
    if not 0 < t_end < t_start <= 1:
        raise ValueError(f"need 0 < t_end < t_start <= 1, got t_start={t_start!r}, t_end={t_end!r}")
    times = _grid_for(schedule, grid, steps, t_start, t_end)
    if (grid or ("time_uniform" if isinstance(schedule, DiscreteSchedule) else "logsnr")) == "logsnr":
        times = torch.cat([torch.tensor([t_start]), times[1:-1], torch.tensor([t_end])])
    return times


def multistep_update(
    x: torch.Tensor,
    x0s: list[torch.Tensor],
    lambdas: torch.Tensor,
    ratio: torch.Tensor,
    alpha_t: torch.Tensor,
    order: int,
) -> torch.Tensor:
    """One multistep DPM-Solver++ update of `order` from s to t, the official formulas (data prediction).

    `x0s`: the data predictions at the latest points, newest (at s) last, at least `order` of them;
    `lambdas`: their lambdas followed by lambda_t (the last order + 1 are used); `ratio` sigma_t /
    sigma_s and `alpha_t` (B,). With h = lambda_t - lambda_s, m0, m1, m2 the newest predictions and
    d1 ~ h m'(lambda_s), d2 ~ h^2 m''(lambda_s) their divided differences, the Taylor form of the
    exponential integrator: x_t = ratio x_s - alpha_t (phi_1 m0 - phi_2 d1 + phi_3 d2), phi_1 =
    expm1(-h), phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2; local error O(h^(order + 1)).

    Orders 1 and 2 are the official `dpm_multistep_update` (order 2 in its 'dpm_solver' form). Order 3
    is not the official `dpm_multistep_third_update` (nor DPM-Solver v2's or diffusers' 3M): those
    use (d1_0 - d1_1) / (r0 + r1) = d2 / 2 as the second difference, which halves the h^2 term and
    leaves an O(h^3) local error (tests/uvit/test_fast_samplers.py measures both orders).
    """
    if order not in (1, 2, 3) or len(x0s) < order or lambdas.shape[0] < order + 1:
        raise ValueError(f"an order-{order} update needs {order} data predictions and {order + 1} lambdas")
    h = lambdas[-1] - lambdas[-2]
    x0 = x0s[-1]
    phi_1 = _bcast(alpha_t * torch.expm1(-h), x)
    x_next = _bcast(ratio, x) * x - phi_1 * x0
    if order == 2:  # the official dpm_multistep_second_update ('dpm_solver' form)
        x0_prev = x0s[-2]
        r = (lambdas[-2] - lambdas[-3]) / h
        x_next = x_next - 0.5 * phi_1 * ((x0 - x0_prev) / r)
    elif order == 3:  # the official dpm_multistep_third_update's structure, d2 = h^2 m'' (see above)
        r0 = (lambdas[-2] - lambdas[-3]) / h
        r1 = (lambdas[-3] - lambdas[-4]) / h
        d1_0 = (x0 - x0s[-2]) / r0  # h m'(lambda_s) - r0 h^2 m'' / 2 + O(h^3)
        d1_1 = (x0s[-2] - x0s[-3]) / r1  # h m'(lambda_s) - (2 r0 + r1) h^2 m'' / 2 + O(h^3)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
        h64 = h.double()  # phi_2, phi_3 cancel to O(h), O(h^2): float64 keeps them exact
        phi_2 = (torch.expm1(-h64) / h64 + 1.0).to(x.dtype)
        phi_3 = ((torch.expm1(-h64) + h64) / h64**2 - 0.5).to(x.dtype)
        x_next = x_next + _bcast(alpha_t * phi_2, x) * d1 - _bcast(alpha_t * phi_3, x) * d2
    return x_next


def _dpm_solver_multistep(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    steps: int,
    schedule: Schedule,
    order: int,
    grid: Grid | None,
    lower_order_final: bool,
    t_start: float,
    t_end: float | None,
) -> torch.Tensor:
    """Multistep DPM-Solver++ (data prediction), NFE = `steps`, orders `multistep_orders`, each update
    `multistep_update` from the data predictions of the latest grid points."""
    _check_steps(steps)
    _check_x(x_T)
    orders = multistep_orders(steps, order, lower_order_final)
    solver = _Solver(eps_fn, schedule, predict_x0=True)
    batch, device = x_T.shape[0], x_T.device
    times = multistep_time_grid(schedule, grid, steps, t_start, t_end).to(device)  # (steps+1,)
    lambdas = schedule.lambda_(times)
    x = x_T
    x0s: list[torch.Tensor] = []  # data predictions of the latest points, newest last
    for i, step_order in enumerate(orders):
        s, t = times[i].expand(batch), times[i + 1].expand(batch)  # (B,)
        x0s = [*x0s[-2:], solver.model_output(x, s)]
        ratio, alpha_t = solver.coefficients(s, t)
        x = multistep_update(x, x0s, lambdas[max(0, i - 2) : i + 2], ratio, alpha_t, step_order)
    return x


@torch.no_grad()
def dpm_solver_2m(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    steps: int,
    schedule: Schedule,
    grid: Grid | None = None,
    lower_order_final: bool = False,
    t_start: float = 1.0,
    t_end: float | None = None,
) -> torch.Tensor:
    """Multistep DPM-Solver++(2M) with NFE = `steps` (first step of order 1), no final denoising.

    Defaults are the official multistep loop: grid time-uniform for the discrete schedule (uniform
    in lambda for VP), every step after the first of order 2 (`lower_order_final=False`).
    """
    return _dpm_solver_multistep(eps_fn, x_T, steps=steps, schedule=schedule, order=2, grid=grid,
                                 lower_order_final=lower_order_final, t_start=t_start, t_end=t_end)  # fmt: skip


@torch.no_grad()
def dpm_solver_3m(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    steps: int,
    schedule: Schedule,
    grid: Grid | None = "logsnr",
    lower_order_final: bool | None = None,
    t_start: float = 1.0,
    t_end: float | None = None,
) -> torch.Tensor:
    """Multistep DPM-Solver++(3M) with NFE = `steps` (orders 1, 2, then 3), no final denoising.

    Defaults (the fast preset): a grid uniform in lambda; lower-order final steps (..., 3, 2, 1) when
    `lower_order_final` is True, or by default (None) at `steps` <= LOWER_ORDER_FINAL_MAX_STEPS,
    where they measured better (at 8 or more steps they cost 2-3x in error on Gaussian data and
    nothing on a trained tiny U-ViT). `grid=None` is the schedule's official grid.
    """
    if lower_order_final is None:
        lower_order_final = steps <= LOWER_ORDER_FINAL_MAX_STEPS if isinstance(steps, int) else False
    return _dpm_solver_multistep(eps_fn, x_T, steps=steps, schedule=schedule, order=3, grid=grid,
                                 lower_order_final=lower_order_final, t_start=t_start, t_end=t_end)  # fmt: skip


@torch.no_grad()
def euler_maruyama(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    steps: int,
    schedule: VPSchedule,
    generator: torch.Generator | None,
    t_min: float = 1e-3,
) -> torch.Tensor:
    """Reverse VP-SDE Euler-Maruyama as the official `sde.euler_maruyama` (NFE = steps).

    Grid [0] + linspace(t_min, 1, steps); from t down to s: x <- x + drift (s - t) + g(t) sqrt(t - s) z,
    drift = -beta(t) x / 2 + beta(t) eps / sigma_t; the last step (to s = 0) returns the mean.
    """
    _check_steps(steps, minimum=2)
    _check_x(x_T)
    if not isinstance(schedule, VPSchedule):
        raise TypeError(f"euler_maruyama needs a VPSchedule (the pixel models' SDE), got {schedule!r}")
    batch = x_T.shape[0]
    zero = torch.zeros(1, dtype=torch.float64)
    times = torch.cat([zero, torch.linspace(t_min, 1.0, steps, dtype=torch.float64)]).to(x_T)  # (steps+1,)
    x = x_T
    for i in range(steps, 0, -1):
        s, t = times[i - 1], times[i]
        eps = eps_fn(x, schedule.net_time(t.expand(batch)))  # (B, C, H, W)
        beta_t = schedule.beta(t)
        score = -eps * (1.0 - schedule.alpha_bar(t)).rsqrt()
        drift = -0.5 * beta_t * x - beta_t * score
        dt = s - t
        mean = x + drift * dt
        if i == 1:
            return mean
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + beta_t.sqrt() * (-dt).sqrt() * noise
    raise AssertionError("unreachable")


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "dpm_solver": dpm_solver,
    "dpm_solver_2m": dpm_solver_2m,
    "dpm_solver_3m": dpm_solver_3m,
    "euler_maruyama": euler_maruyama,
}


def sample(
    sampler: str,
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    steps: int,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    grid: Grid | None = None,
) -> torch.Tensor:
    """Run the named sampler (one of `SAMPLERS`) with its defaults; only euler_maruyama uses `generator`.

    `grid` (one of `GRIDS`) replaces the ODE sampler's default time grid; None keeps it (official for
    `dpm_solver` and `dpm_solver_2m`, logSNR for `dpm_solver_3m`). euler_maruyama takes no grid.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    if grid is not None and grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(map(repr, GRIDS))} (or None)")
    if sampler == "euler_maruyama":
        if grid is not None:
            raise ValueError(f"euler_maruyama runs on its official grid only; got grid={grid!r} (use None)")
        if generator is None:
            raise ValueError("euler_maruyama is stochastic: pass a torch.Generator")
        return euler_maruyama(eps_fn, x_T, steps=steps, schedule=schedule, generator=generator)  # type: ignore[arg-type]
    grid_kwargs = {} if grid is None else {"grid": grid}
    return SAMPLERS[sampler](eps_fn, x_T, steps=steps, schedule=schedule, **grid_kwargs)


def guided_eps_fn(
    model: nn.Module | Callable[..., torch.Tensor],
    *,
    cond: torch.Tensor | None = None,
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 0.0,
    batched: bool = True,
) -> EpsFn:
    """eps_fn(x, t_net) of `model(x, t, cond)` with guidance eps_c + s (eps_c - eps_u), s = `cfg_scale`.

    `cond`/`uncond`: labels (B,) or contexts (B, N, D), same shape. `batched=True` runs one pass of a
    doubled batch, otherwise two passes (the official way); both give the same eps.
    """
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0 (official s; w = 1 + s), got {cfg_scale}")
    if cond is None:
        if cfg_scale != 0 or uncond is not None:
            raise ValueError("guidance (cfg_scale > 0) needs a condition")
        return lambda x, t_net: model(x, t_net)
    if cfg_scale == 0:
        return lambda x, t_net: model(x, t_net, cond)
    if uncond is None or uncond.shape != cond.shape:
        got = None if uncond is None else tuple(uncond.shape)
        raise ValueError(
            f"guidance needs an unconditional input of the condition's shape {tuple(cond.shape)}, got {got}"
        )

    def two_pass(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        return guided_eps(model(x, t_net, cond), model(x, t_net, uncond), cfg_scale)

    def one_pass(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        eps = model(torch.cat([x, x]), torch.cat([t_net, t_net]), torch.cat([cond, uncond]))  # (2B, C, H, W)
        eps_cond, eps_uncond = eps.chunk(2)
        return guided_eps(eps_cond, eps_uncond, cfg_scale)

    return one_pass if batched else two_pass


def generate(
    model: nn.Module | Callable[..., torch.Tensor],
    x_T: torch.Tensor,
    *,
    schedule: Schedule,
    sampler: str = "dpm_solver",
    steps: int = 50,
    cfg_scale: float = 0.0,
    labels: torch.Tensor | None = None,
    null_label: int | None = None,
    context: torch.Tensor | None = None,
    empty_context: torch.Tensor | None = None,
    batched_cfg: bool = True,
    generator: torch.Generator | None = None,
    grid: Grid | None = None,
) -> torch.Tensor:
    """Guided sampling in one call: final latents (B, C, H, W) from noise `x_T`.

    Class models: `labels` (B,) and `null_label` (the null class, e.g. 1000). Text models: `context`
    (B, 77, 768) and `empty_context` (77, 768), the empty caption's embedding. Unconditional models:
    neither. `cfg_scale` is the official s (w = 1 + s); 0 disables guidance. `grid`: see `sample`.
    """
    batch = x_T.shape[0]
    if labels is not None and context is not None:
        raise ValueError("pass labels (class model) or context (text model), not both")
    cond = uncond = None
    if labels is not None:
        if labels.shape != (batch,):
            raise ValueError(f"labels must be ({batch},), got {tuple(labels.shape)}")
        cond = labels
        if cfg_scale > 0:
            if null_label is None:
                raise ValueError("guidance with labels needs null_label (the null class index)")
            uncond = torch.full_like(labels, null_label)
    elif context is not None:
        if context.ndim != 3 or context.shape[0] != batch:
            raise ValueError(f"context must be ({batch}, N, D), got {tuple(context.shape)}")
        cond = context
        if cfg_scale > 0:
            if empty_context is None or empty_context.shape != context.shape[1:]:
                got = None if empty_context is None else tuple(empty_context.shape)
                raise ValueError(f"guidance needs empty_context of shape {tuple(context.shape[1:])}, got {got}")
            uncond = empty_context.to(context).unsqueeze(0).expand_as(context)  # (B, N, D)
    elif cfg_scale > 0:
        raise ValueError("cfg_scale > 0 needs labels or context")
    eps_fn = guided_eps_fn(model, cond=cond, uncond=uncond, cfg_scale=cfg_scale, batched=batched_cfg)
    with torch.no_grad():
        return sample(sampler, eps_fn, x_T, steps=steps, schedule=schedule, generator=generator, grid=grid)
