"""Float32 tolerances for comparisons with data from the official code, in ulps of what is compared.

Each tolerance is stated once here, with why, and documented in tests/data/official/README.md
(with the mistakes each comparison must still catch, tests/uvit/test_parity_sensitivity.py). A
tolerance is a number of float32 ulps of a stated magnitude, never an absolute figure tuned on one
machine: the suite runs on CPUs with other kernels (generic, AVX2, AVX-512), whose float32 results
differ by a few roundings.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23: one ulp of 1.0

# Model tensors (outputs and block activations), in ulps of the tensor's largest |value|. The
# official time embedding rounds t * freq in float32 (arguments up to ~1234: one ulp is 1.2e-4),
# and that rounding, which differs between exp/cos kernels, reaches every block: ours and the
# golden each lie up to ~53 ulps from the exact (float64) evaluation of the same weights on
# generic, AVX2 and AVX-512 kernels, so up to ~106 from each other.
MODEL_ULPS = 128
# The golden against the exact (float64) evaluation of our architecture with the same weights: its
# own float32 rounding only (measured 53 at most), so this check is the same on every machine.
MODEL_EXACT_ULPS = 64
# Timestep embeddings cos/sin(t * freq), in ulps of (|t * freq| + 1): the argument's float32
# rounding dominates; a frequency one ulp off (exp kernels differ) moves the argument by up to two
# (measured 1.3 on this data; 3.5 with frequencies rounded from float64).
TIMESTEP_EMBEDDING_ULPS = 8
# Network times t * 1000 (or 999 t) of the samplers, element by element in ulps of their own value:
# grids and the inverse of lambda in float32 (measured 4.1).
SAMPLER_TIME_ULPS = 16
# Sampler states (the x of every network call, the final x), in ulps of the largest |x|: a few
# roundings per step, amplified by the step's alpha/sigma ratios (measured 23.5).
SAMPLER_STATE_ULPS = 64


def ulps_of_max(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in float32 ulps of max |expected| (a relative bound on the whole tensor)."""
    scale = expected.double().abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return ((actual.double() - expected.double()).abs().max() / (EPS32 * scale)).item()


def ulps_of(actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor | None = None) -> float:
    """max over elements of |actual - expected| in float32 ulps of `magnitude` (default |expected|)."""
    magnitude = expected.abs() if magnitude is None else magnitude
    scale = magnitude.double().clamp_min(torch.finfo(torch.float32).tiny)
    return ((actual.double() - expected.double()).abs() / (EPS32 * scale)).max().item()


def assert_ulps(measured: float, ulps: float, what: str) -> None:
    """Fail with the measured and the allowed ulps in the message (a NaN or inf fails too)."""
    assert math.isfinite(measured), f"{what}: the comparison is not finite ({measured})"
    assert measured <= ulps, f"{what}: {measured:.1f} float32 ulps apart, {ulps} allowed"
