"""Comparisons with the data from the official code, shared by the parity tests and their sensitivity test.

Each function takes the module under test (uvit.model, uvit.sampling) as an argument, so that
tests/uvit/test_parity_sensitivity.py can run the same comparison on a copy of that module with one
mistake written into its source, and show that the comparison fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from numerics import ulps_of, ulps_of_max
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "data" / "official"
# The golden data's network is defined once, in the script that made the data.
sys.path.insert(0, str(OFFICIAL))
from make_sampler_golden import analytic_eps  # noqa: E402

# Golden forward files of the official models, and the class each one is.
GOLDEN_MODELS = {"a_uncond_pixel": "UViT", "b_classcond_latent": "UViT", "c_text_latent": "UViTT2I"}
SAMPLER_CASES = [("discrete_dpm_solver", s) for s in (10, 25, 50)]
SAMPLER_CASES += [("discrete_dpm_solver_2m", s) for s in (10, 25, 50)]
SAMPLER_CASES += [("vp_dpm_solver", s) for s in (10, 25, 50)]
SAMPLER_CASES += [("vp_euler_maruyama", s) for s in (10, 25)]


# ------------------------------------------------------------------ a module with a mistake in it
@contextlib.contextmanager
def mutated(module_name: str, old: str, new: str, *, dependants: tuple[str, ...] = ()) -> Iterator[dict]:
    """Fresh copies of `module_name` with `old` replaced by `new` in its source (exactly one place),
    and of `dependants` importing that copy; yields {name: module}. Nothing global is changed after."""
    source = (ROOT / (module_name.replace(".", "/") + ".py")).read_text()
    count = source.count(old)
    if count != 1:
        raise AssertionError(
            f"{module_name}: the mistake's anchor {old!r} occurs {count} times; the sensitivity table in "
            "tests/uvit/test_parity_sensitivity.py must follow the code it mutates"
        )
    saved = {name: sys.modules.get(name) for name in (module_name, *dependants)}
    modules: dict[str, types.ModuleType] = {}
    try:
        for name, text in [(module_name, source.replace(old, new))] + [
            (d, (ROOT / (d.replace(".", "/") + ".py")).read_text()) for d in dependants
        ]:
            module = types.ModuleType(name)
            module.__file__ = str(ROOT / (name.replace(".", "/") + ".py"))
            sys.modules[name] = module  # dependants' imports of `module_name` resolve to the copy
            exec(compile(text, f"<{name} with a mistake>", "exec"), module.__dict__)
            modules[name] = module
        yield modules
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# ------------------------------------------------------------------ model forward goldens
def load_golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(constructor kwargs, tensors) of a golden forward file."""
    path = OFFICIAL / f"{name}.safetensors"
    return json.loads(safe_open(str(path), "pt").metadata()["model_kwargs"]), load_file(str(path))


def golden_model(model_module: types.ModuleType, name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The golden's official state dict loaded with strict=True into `model_module`'s class, eval mode."""
    kwargs, tensors = load_golden(name)
    model = getattr(model_module, GOLDEN_MODELS[name])(**kwargs).eval()
    state = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    model.load_state_dict(state, strict=True)
    return model, tensors


def _condition(tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return tensors.get("input.y", tensors.get("input.context"))


def forward_with_intermediates(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:  # fmt: skip
    """`output` and every recorded intermediate (`in_blocks.i`, `mid_block`, ...) the golden also holds."""
    modules = {"patch_embed": model.patch_embed, "mid_block": model.mid_block, "norm": model.norm,
               "decoder_pred": model.decoder_pred}  # fmt: skip
    modules |= {f"in_blocks.{i}": b for i, b in enumerate(model.in_blocks)}
    modules |= {f"out_blocks.{i}": b for i, b in enumerate(model.out_blocks)}
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o))
        for key, module in modules.items()
        if f"intermediate.{key}" in tensors
    ]
    condition = _condition(tensors)
    if condition is not None and condition.is_floating_point():
        condition = condition.to(dtype)
    try:
        with torch.no_grad():
            seen["output"] = model(tensors["input.x"].to(dtype), tensors["input.timesteps"].to(dtype), condition)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _golden(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return tensors["output.math"] if key == "output" else tensors[f"intermediate.{key}"]


def model_ulps(model_module: types.ModuleType, name: str) -> dict[str, float]:
    """Ours (float32) against the golden: ulps of each tensor's largest value (numerics.MODEL_ULPS)."""
    model, tensors = golden_model(model_module, name)
    return {k: ulps_of_max(v, _golden(tensors, k)) for k, v in forward_with_intermediates(model, tensors).items()}


def exact_timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """cos/sin(t * freq) evaluated in float64: the function the official float32 code rounds."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)  # (half,)
    args = timesteps[:, None].double() * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def exact_model_ulps(model_module: types.ModuleType, name: str) -> dict[str, float]:
    """The golden against our architecture evaluated in float64 with the same weights and an exact
    time embedding (numerics.MODEL_EXACT_ULPS): the official float32 rounding only, on any machine."""
    model, tensors = golden_model(model_module, name)
    model = model.double()
    original = model_module.timestep_embedding
    model_module.timestep_embedding = exact_timestep_embedding
    try:
        exact = forward_with_intermediates(model, tensors, torch.float64)
    finally:
        model_module.timestep_embedding = original
    return {k: ulps_of_max(_golden(tensors, k), v) for k, v in exact.items()}


def timestep_embedding_ulps(model_module: types.ModuleType) -> float:
    """Ours against the official embeddings, in ulps of (|t * freq| + 1) (numerics.TIMESTEP_EMBEDDING_ULPS)."""
    t = load_file(str(OFFICIAL / "timestep_embedding_and_patchify.safetensors"))
    cases = [(f"dim{d}", "timesteps", d, 10000) for d in (7, 64, 65, 512, 768, 1152)]
    cases += [("dim64_maxperiod100", "timesteps", 64, 100), ("int_dim64", "int_timesteps", 64, 10000)]
    worst = 0.0
    for key, timesteps_key, dim, max_period in cases:
        timesteps = t[f"timestep_embedding.{timesteps_key}"]
        got = model_module.timestep_embedding(timesteps, dim, max_period=max_period)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        argument = (timesteps[:, None].double() * freqs[None]).abs()  # (B, half)
        magnitude = torch.cat([argument, argument] + ([argument[:, :1] * 0] if dim % 2 else []), -1) + 1.0
        worst = max(worst, ulps_of(got, t[f"timestep_embedding.{key}"], magnitude))
    return worst


# ------------------------------------------------------------------ sampler golden
def sampler_golden() -> dict[str, torch.Tensor]:
    return load_file(str(OFFICIAL / "sampler_golden.safetensors"))


def sampler_ulps(sampling: types.ModuleType, golden: dict[str, torch.Tensor], case: str, steps: int) -> dict:
    """Ours against the official sampler run: number of network calls, their times (ulps of each time,
    numerics.SAMPLER_TIME_ULPS), their inputs and the output (ulps of the largest |x|, SAMPLER_STATE_ULPS)."""
    diffusion = sys.modules[sampling.DiscreteSchedule.__module__]
    params = {k: v for k, v in golden.items() if k.startswith("eps.")}
    kind = case.split("_")[0]
    xs: list[torch.Tensor] = []
    ts: list[torch.Tensor] = []

    def eps_fn(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        xs.append(x.clone())
        ts.append(t_net.clone())
        return analytic_eps(x, t_net, kind, params)

    prefix = f"{case}.steps{steps}"
    if case == "vp_euler_maruyama":
        generator = torch.Generator().manual_seed(int(golden[f"{prefix}.seed"]))
        out = sampling.euler_maruyama(eps_fn, golden[f"x_T.em_steps{steps}"], steps=steps,
                                      schedule=diffusion.VPSchedule(), generator=generator)  # fmt: skip
    else:
        sampler = sampling.dpm_solver_2m if case.endswith("2m") else sampling.dpm_solver
        schedule = diffusion.DiscreteSchedule() if kind == "discrete" else diffusion.VPSchedule()
        out = sampler(eps_fn, golden[f"x_T.steps{steps}"], steps=steps, schedule=schedule)
    calls = golden[f"{prefix}.x_calls"].shape[0]
    if len(xs) != calls:
        return {"calls": (len(xs), calls), "t_net": math.inf, "x": math.inf, "output": math.inf}
    return {
        "calls": (len(xs), calls),
        "t_net": ulps_of(torch.stack(ts), golden[f"{prefix}.t_net_calls"]),
        "x": ulps_of_max(torch.stack(xs), golden[f"{prefix}.x_calls"]),
        "output": ulps_of_max(out, golden[f"{prefix}.output"]),
    }
