"""Diffusion math of U-ViT: noise schedules, forward noising, the training loss and guidance.

Two schedules, both exactly as the official code (baofff/U-ViT @ ce55170) defines them:

- `DiscreteSchedule`: N=1000 Stable-Diffusion scaled-linear betas (ImageNet H, MS-COCO). Training
  uses the exact products `alpha_bar[n]` (float64) at integer n in 1..N; the sampler sees the
  continuous-time view of `dpm_solver_pp.NoiseScheduleVP('discrete')`: log alpha is piecewise-linear
  (linearly extrapolated) over the knots t_n = n/N, in float32.
- `VPSchedule`: the continuous VP-SDE with linear beta(t) from 0.1 to 20 (pixel models, ImageNet L).

Both give `log_alpha`, `alpha`, `sigma`, `lambda_` (half log-SNR, log alpha - log sigma) and
`inverse_lambda` for t in [0, 1], and `net_time(t)`, the time the network is given.

Guidance follows the official convention `eps = eps_c + s * (eps_c - eps_u)` (`cfg_scale` = s; the
more common w is 1 + s). Everything here is pure: random sources are injected as torch.Generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from uvit.config import DiffusionConfig

__all__ = [
    "DiscreteSchedule",
    "VPSchedule",
    "Schedule",
    "from_config",
    "stable_diffusion_betas",
    "forward_noise",
    "training_loss",
    "drop_condition",
    "guided_eps",
]


def stable_diffusion_betas(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable-Diffusion scaled-linear betas `linspace(sqrt(start), sqrt(end), N)**2`, float64 (N,)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of knots (xp increasing) with linear extrapolation outside."""
    index = (torch.searchsorted(xp, x.contiguous()) - 1).clamp(0, xp.numel() - 2)
    start_x, end_x = xp[index], xp[index + 1]
    start_y, end_y = fp[index], fp[index + 1]
    # Same operation order as the official `interpolate_fn`, so float32 results agree.
    return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)


class _ScheduleBase:
    """What every schedule shares: alpha, sigma and lambda from `log_alpha`."""

    kind: Literal["discrete", "vp"]
    t_end: float  # where the official DPM-Solver stops (its `eps`)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_t (alpha_t = sqrt(alpha_bar(t)), the mean coefficient of q(x_t | x_0))."""
        raise NotImplementedError

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_t, the mean coefficient: x_t = alpha_t x0 + sigma_t eps."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t = sqrt(1 - alpha_t^2), the noise standard deviation."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR lambda_t = log alpha_t - log sigma_t (decreasing in t)."""
        log_alpha = self.log_alpha(t)
        log_sigma = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        return log_alpha - log_sigma

    def inverse_lambda(self, lambda_: torch.Tensor) -> torch.Tensor:
        """The time t with lambda_t = `lambda_`."""
        raise NotImplementedError

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time input the network was trained with, for continuous t in [0, 1]."""
        raise NotImplementedError


class DiscreteSchedule(_ScheduleBase):
    """N-step discrete-time DDPM schedule (default: Stable-Diffusion betas, N = 1000)."""

    kind = "discrete"

    def __init__(self, betas: torch.Tensor | None = None):
        betas = stable_diffusion_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(f"betas must be a 1-D tensor of at least 2 values, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie strictly between 0 and 1")
        self.betas = betas  # (N,) float64, betas[n-1] is the variance of q(x_n | x_{n-1})
        self.num_timesteps = betas.numel()
        # alpha_bar[n] = prod_{i<=n} (1 - beta_i) for n = 0..N, alpha_bar[0] = 1 (training view).
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
        # The sampler's continuous view, float32 like the official NoiseScheduleVP('discrete').
        self._t_knots = torch.linspace(1.0 / self.num_timesteps, 1.0, self.num_timesteps)  # (N,)
        self._log_alpha_knots = 0.5 * torch.log(1 - betas.float()).cumsum(dim=0)  # (N,) decreasing
        self._device_knots: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self._device_alpha_bar: dict[torch.device, torch.Tensor] = {}
        self.t_end = 1.0 / self.num_timesteps

    def __repr__(self) -> str:
        return f"DiscreteSchedule(N={self.num_timesteps})"

    def _knots(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._device_knots:
            t, log_alpha = self._t_knots.to(device), self._log_alpha_knots.to(device)
            self._device_knots[device] = (t, log_alpha, t.flip(0), log_alpha.flip(0))
        return self._device_knots[device]  # type: ignore[return-value]

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_t, piecewise-linear over the knots t_n = n/N (float32, as the official sampler)."""
        t_knots, log_alpha_knots, _, _ = self._knots(t.device)
        return _interpolate(t, t_knots, log_alpha_knots)

    def inverse_lambda(self, lambda_: torch.Tensor) -> torch.Tensor:
        """t from lambda_t via log alpha = -0.5 log(1 + exp(-2 lambda)), interpolated back to t."""
        _, _, t_flipped, log_alpha_flipped = self._knots(lambda_.device)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros(1, device=lambda_.device), -2.0 * lambda_)
        return _interpolate(log_alpha, log_alpha_flipped, t_flipped)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """t * N: the official sampler calls the network at fractional times 1.0 ... 1000.0."""
        return t * self.num_timesteps

    def alpha_bar_at(self, n: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps n in 0..N (float64, on n's device)."""
        if n.dtype.is_floating_point:
            raise TypeError(f"n must be an integer tensor, got {n.dtype}")
        if bool(((n < 0) | (n > self.num_timesteps)).any()):
            raise ValueError(f"timesteps must lie in 0..{self.num_timesteps}")
        return self._alpha_bar_on(n.device)[n]

    def _alpha_bar_on(self, device: torch.device) -> torch.Tensor:
        """The alpha_bar table (N + 1,) on `device`, copied there once (not at every training step)."""
        if device not in self._device_alpha_bar:
            self._device_alpha_bar[device] = self.alpha_bar.to(device)
        return self._device_alpha_bar[device]


class VPSchedule(_ScheduleBase):
    """Continuous VP-SDE with beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]."""

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.t_end = 1e-4

    def __repr__(self) -> str:
        return f"VPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = g(t)^2, the squared diffusion coefficient."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_t = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2)), as `sde.VPSDE.cum_alpha`."""
        return torch.exp(-(self.beta_min * t + (self.beta_max - self.beta_min) * t**2 * 0.5))

    def inverse_lambda(self, lambda_: torch.Tensor) -> torch.Tensor:
        """Closed-form inverse of lambda_t (root of the quadratic in t)."""
        delta_beta = self.beta_max - self.beta_min
        tmp = 2.0 * delta_beta * torch.logaddexp(-2.0 * lambda_, torch.zeros(1, device=lambda_.device))
        discriminant = self.beta_min**2 + tmp
        return tmp / (torch.sqrt(discriminant) + self.beta_min) / delta_beta

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """999 * t, as the official `ScoreModel.predict`."""
        return t * 999


Schedule = DiscreteSchedule | VPSchedule


def from_config(config: DiffusionConfig) -> Schedule:
    """The schedule a `DiffusionConfig` describes."""
    if config.schedule == "discrete":
        return DiscreteSchedule(stable_diffusion_betas(config.num_timesteps, config.beta_start, config.beta_end))
    if config.schedule == "vp":
        return VPSchedule(config.beta_min, config.beta_max)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid schedules: 'discrete', 'vp'")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like` (B, ...)."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def forward_noise(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = alpha x0 + sigma eps with per-sample alpha, sigma (B,)."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} differ in shape")
    return _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * eps  # (B, C, H, W)


def drop_condition(
    cond: torch.Tensor, null_cond: int | torch.Tensor, p_uncond: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Replace each sample's condition by the null one with probability `p_uncond` (guidance training).

    Labels (B,) take the null class index (an int); text contexts (B, N, D) take the empty-caption
    embedding (N, D), broadcast.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    if p_uncond == 0.0:
        return cond
    batch = cond.shape[0]
    drop = torch.rand(batch, generator=generator, device=cond.device) < p_uncond  # (B,)
    if isinstance(null_cond, int):
        if cond.dtype.is_floating_point or cond.ndim != 1:
            raise ValueError(f"an int null class needs integer labels (B,), got {cond.dtype} {tuple(cond.shape)}")
        return torch.where(drop, torch.full_like(cond, null_cond), cond)
    null_cond = null_cond.to(device=cond.device, dtype=cond.dtype)
    if null_cond.shape != cond.shape[1:]:
        raise ValueError(f"null condition {tuple(null_cond.shape)} must match one condition {tuple(cond.shape[1:])}")
    return torch.where(_per_sample(drop, cond), null_cond.unsqueeze(0), cond)  # (B, N, D)


def training_loss(
    model_fn: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond: torch.Tensor | None,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    *,
    p_uncond: float = 0.0,
    null_cond: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise-prediction loss: mean over (C, H, W) of (eps - eps_pred)^2, then over the batch (a scalar).

    Discrete: n uniform in 1..N, x_n = sqrt(alpha_bar_n) x0 + sqrt(1 - alpha_bar_n) eps, the network
    sees the integer n (as a float tensor). VP: t ~ U(0, 1), the network sees 999 t.
    `model_fn(x_t, t_net, cond)` (or `model_fn(x_t, t_net)` when `cond` is None). With `p_uncond > 0`
    conditions are first dropped to `null_cond` (see `drop_condition`). Draw order: dropout, time, eps.
    """
    batch = x0.shape[0]
    device = x0.device
    if p_uncond > 0.0:
        if cond is None or null_cond is None:
            raise ValueError("p_uncond > 0 needs a condition and its null_cond")
        cond = drop_condition(cond, null_cond, p_uncond, generator)
    if isinstance(schedule, DiscreteSchedule):
        n = torch.randint(1, schedule.num_timesteps + 1, (batch,), generator=generator, device=device)  # (B,)
        # n is in 1..N by construction: index the table without `alpha_bar_at`'s range check, which
        # reads a flag back from the device (a host sync at every step).
        alpha_bar = schedule._alpha_bar_on(n.device)[n]  # (B,) float64
        alpha, sigma = alpha_bar.sqrt().to(x0.dtype), (1.0 - alpha_bar).sqrt().to(x0.dtype)
        t_net = n.to(x0.dtype)
    elif isinstance(schedule, VPSchedule):
        t = torch.rand(batch, generator=generator, device=device)  # (B,)
        alpha_bar = schedule.alpha_bar(t)
        alpha, sigma = alpha_bar.sqrt().to(x0.dtype), (1.0 - alpha_bar).sqrt().to(x0.dtype)
        t_net = schedule.net_time(t).to(x0.dtype)
    else:
        raise TypeError(f"unknown schedule type {type(schedule).__name__}")
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)  # (B, C, H, W)
    xt = forward_noise(x0, eps, alpha, sigma)
    eps_pred = model_fn(xt, t_net) if cond is None else model_fn(xt, t_net, cond)
    if eps_pred.shape != eps.shape:
        raise ValueError(f"model output {tuple(eps_pred.shape)} does not match x {tuple(eps.shape)}")
    per_sample = (eps.float() - eps_pred.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return per_sample.mean()


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance, official form: eps_c + s (eps_c - eps_u); s = `cfg_scale`, w = 1 + s."""
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
    return eps_cond + cfg_scale * (eps_cond - eps_uncond)
