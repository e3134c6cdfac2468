"""The parity tolerances still catch the mistakes that matter, and accept what only rounds differently.

Each row writes one mistake into a fresh copy of the module's source (tests/parity.py `mutated`) and
runs the same comparison with the official data as the parity tests. A mistake must miss by at least
`MARGIN` times the tolerance, so that no other CPU's rounding can hide it; a rewrite that only changes
float32 rounding must pass. The table in tests/data/official/README.md is printed by
`.venv/bin/python tests/uvit/test_parity_sensitivity.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script

from numerics import (  # noqa: E402
    MODEL_EXACT_ULPS,
    MODEL_ULPS,
    SAMPLER_STATE_ULPS,
    SAMPLER_TIME_ULPS,
    TIMESTEP_EMBEDDING_ULPS,
)
from parity import (  # noqa: E402
    GOLDEN_MODELS,
    SAMPLER_CASES,
    exact_model_ulps,
    model_ulps,
    mutated,
    sampler_golden,
    sampler_ulps,
    timestep_embedding_ulps,
)

pytestmark = pytest.mark.parity
MARGIN = 4
# The comparison with the float64 evaluation is the same on every machine (float64 rounding is ~1e-9
# of a float32 ulp), so a mistake it catches needs no room for other CPUs' rounding.
EXACT_MARGIN = 1.5

# (what goes wrong, module, anchor in its source, the mistake); model rows run on every golden model.
MODEL_MISTAKES = [
    ("label token after the time token", "uvit.model",
     "torch.cat([self.label_emb(y).unsqueeze(1), time_token], dim=1)",
     "torch.cat([time_token, self.label_emb(y).unsqueeze(1)], dim=1)"),
    ("text tokens [context, time, patches]", "uvit.model",
     "torch.cat([time_token, self.context_embed(context)], dim=1)",
     "torch.cat([self.context_embed(context), time_token], dim=1)"),
    ("time embedding [sin, cos]", "uvit.model",
     "torch.cat([torch.cos(args), torch.sin(args)], dim=-1)",
     "torch.cat([torch.sin(args), torch.cos(args)], dim=-1)"),
    ("timesteps rounded to integers", "uvit.model",
     "args = timesteps[:, None].float() * freqs[None]",
     "args = timesteps[:, None].round().float() * freqs[None]"),
    ("frequencies over half - 1", "uvit.model",
     "torch.arange(half, dtype=torch.float32, device=timesteps.device) / half",
     "torch.arange(half, dtype=torch.float32, device=timesteps.device) / max(half - 1, 1)"),
    ("tanh-approximate GELU", "uvit.model", "self.act = nn.GELU()", 'self.act = nn.GELU(approximate="tanh")'),
    ("LayerNorm eps 1e-6 in the blocks", "uvit.model",
     "self.norm1 = nn.LayerNorm(dim)\n", "self.norm1 = nn.LayerNorm(dim, eps=1e-6)\n"),
    ("q and k swapped", "uvit.model", "q, k, v = qkv.transpose(1, 3).unbind(2)",
     "k, q, v = qkv.transpose(1, 3).unbind(2)"),
    ("attention scale D**-0.5", "uvit.model", "self.scale = qk_scale\n",
     "self.scale = qk_scale or dim**-0.5\n"),
    ("long skips first-in first-out", "uvit.model", "tokens = blk(tokens, skips.pop())",
     "tokens = blk(tokens, skips.pop(0))"),
    ("skip concatenated [skip, x]", "uvit.model", "torch.cat([x, skip], dim=-1)", "torch.cat([skip, x], dim=-1)"),
    ("no final LayerNorm", "uvit.model", "self.decoder_pred(self.norm(tokens))", "self.decoder_pred(tokens)"),
    ("position embedding on the patches only", "uvit.model",
     "tokens = torch.cat([prefix, patches], dim=1) + self.pos_embed",
     "tokens = torch.cat([prefix, patches + self.pos_embed[:, self.extras :]], dim=1)"),
]  # fmt: skip
# Rewrites that change float32 rounding only: they must pass.
MODEL_EQUIVALENTS = [
    ("explicit-softmax attention (the official 'math' mode)", "uvit.model",
     "x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)",
     "x = ((q @ k.transpose(-2, -1)) * (self.scale or self.head_dim**-0.5)).softmax(-1) @ v"),
    ("frequencies rounded from float64 (another exp kernel)", "uvit.model",
     "torch.arange(half, dtype=torch.float32, device=timesteps.device) / half\n    )",
     "torch.arange(half, dtype=torch.float64, device=timesteps.device) / half\n    ).float()"),
]  # fmt: skip
SAMPLER_MISTAKES = [
    ("order-3 first intermediate point at r1 = 1/2", "uvit.sampling",
     "r1 = (1.0 / 3.0 if order == 3 else 0.5)", "r1 = (0.5 if order == 3 else 0.5)"),
    ("order-3 second intermediate point at r2 = 3/4", "uvit.sampling",
     "r2 = 2.0 / 3.0 if r2 is None else r2", "r2 = 3.0 / 4.0 if r2 is None else r2"),
    ("third-order correction with phi_2 + 1", "uvit.sampling",
     "phi_2 = torch.expm1(z) / z - 1.0\n", "phi_2 = torch.expm1(z) / z + 1.0\n"),
    ("2M correction not divided by r", "uvit.sampling", "((x0 - x0_prev) / r)", "(x0 - x0_prev)"),
    ("Euler-Maruyama from t_min 1e-4", "uvit.sampling", "t_min: float = 1e-3", "t_min: float = 1e-4"),
    ("Euler-Maruyama noise scaled by dt, not sqrt(dt)", "uvit.sampling",
     "beta_t.sqrt() * (-dt).sqrt() * noise", "beta_t.sqrt() * (-dt) * noise"),
    ("discrete sampler ends at t = 1e-4", "uvit.diffusion", "self.t_end = 1.0 / self.num_timesteps",
     "self.t_end = 1e-4"),
    ("VP sampler ends at t = 1e-3", "uvit.diffusion", "self.t_end = 1e-4", "self.t_end = 1e-3"),
    ("discrete network time 999 t", "uvit.diffusion", "return t * self.num_timesteps",
     "return t * (self.num_timesteps - 1)"),
    ("VP network time 1000 t", "uvit.diffusion", "return t * 999", "return t * 1000"),
    ("discrete knots at n/N from n = 0", "uvit.diffusion",
     "torch.linspace(1.0 / self.num_timesteps, 1.0, self.num_timesteps)",
     "torch.linspace(0.0, 1.0 - 1.0 / self.num_timesteps, self.num_timesteps)"),
]  # fmt: skip
SAMPLER_EQUIVALENTS = [
    ("discrete log-alpha knots from float64 betas", "uvit.diffusion",
     "0.5 * torch.log(1 - betas.float()).cumsum(dim=0)", "(0.5 * torch.log(1 - betas).cumsum(dim=0)).float()"),
    ("interpolation in another operation order", "uvit.diffusion",
     "start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)",
     "start_y + (x - start_x) / (end_x - start_x) * (end_y - start_y)"),
]  # fmt: skip


def _model_report(module_name: str, old: str, new: str) -> dict[str, float]:
    """Worst ulps over the golden models: direct (ours vs golden), exact (golden vs float64), embedding."""
    with mutated(module_name, old, new) as modules:
        model = modules[module_name]
        direct = max(max(model_ulps(model, name).values()) for name in GOLDEN_MODELS)
        exact = max(max(exact_model_ulps(model, name).values()) for name in GOLDEN_MODELS)
        embedding = timestep_embedding_ulps(model)
    return {"direct": direct, "exact": exact, "embedding": embedding}


def _sampler_report(module_name: str, old: str, new: str) -> dict[str, float]:
    """Worst ulps over the sampler cases, relative to each quantity's tolerance."""
    golden = sampler_golden()
    dependants = ("uvit.sampling",) if module_name == "uvit.diffusion" else ()
    with mutated(module_name, old, new, dependants=dependants) as modules:
        sampling = modules["uvit.sampling"] if dependants else modules[module_name]
        rows = [sampler_ulps(sampling, golden, case, steps) for case, steps in SAMPLER_CASES]
    return {
        "t_net": max(r["t_net"] for r in rows) / SAMPLER_TIME_ULPS,
        "state": max(max(r["x"], r["output"]) for r in rows) / SAMPLER_STATE_ULPS,
    }


def _model_caught(report: dict[str, float]) -> bool:
    """A comparison misses by its margin: ours vs the golden or the embeddings by MARGIN tolerances, or
    the golden vs the float64 evaluation of our architecture by EXACT_MARGIN."""
    return (
        report["direct"] > MARGIN * MODEL_ULPS
        or report["embedding"] > MARGIN * TIMESTEP_EMBEDDING_ULPS
        or report["exact"] > EXACT_MARGIN * MODEL_EXACT_ULPS
    )


def _model_verdict(report: dict[str, float]) -> str:
    misses = {"ours": report["direct"] / MODEL_ULPS, "float64": report["exact"] / MODEL_EXACT_ULPS,
              "embedding": report["embedding"] / TIMESTEP_EMBEDDING_ULPS}  # fmt: skip
    check, ratio = max(misses.items(), key=lambda kv: kv[1])
    return f"caught ({check}: {ratio:.3g}x its tolerance)" if _model_caught(report) else "passes"


@pytest.mark.parametrize("what,module,old,new", MODEL_MISTAKES, ids=[m[0] for m in MODEL_MISTAKES])
def test_model_parity_catches(what: str, module: str, old: str, new: str) -> None:
    report = _model_report(module, old, new)
    assert _model_caught(report), f"{what} passes the model parity checks: {report}"


@pytest.mark.parametrize("what,module,old,new", MODEL_EQUIVALENTS, ids=[m[0] for m in MODEL_EQUIVALENTS])
def test_model_parity_accepts(what: str, module: str, old: str, new: str) -> None:
    report = _model_report(module, old, new)
    assert report["direct"] <= MODEL_ULPS and report["exact"] <= MODEL_EXACT_ULPS, (what, report)
    assert report["embedding"] <= TIMESTEP_EMBEDDING_ULPS, (what, report)


@pytest.mark.parametrize("what,module,old,new", SAMPLER_MISTAKES, ids=[m[0] for m in SAMPLER_MISTAKES])
def test_sampler_parity_catches(what: str, module: str, old: str, new: str) -> None:
    report = _sampler_report(module, old, new)
    assert max(report.values()) > MARGIN, f"{what} passes the sampler parity checks: {report}"


@pytest.mark.parametrize("what,module,old,new", SAMPLER_EQUIVALENTS, ids=[m[0] for m in SAMPLER_EQUIVALENTS])
def test_sampler_parity_accepts(what: str, module: str, old: str, new: str) -> None:
    report = _sampler_report(module, old, new)
    assert max(report.values()) <= 1.0, (what, report)


def main() -> None:
    """Print the sensitivity table of tests/data/official/README.md."""
    print("| rewrite | ours vs golden (ulps) | golden vs float64 (ulps) | embedding (ulps) | verdict |")
    print("|---|---|---|---|---|")
    for what, module, old, new in MODEL_MISTAKES + MODEL_EQUIVALENTS:
        r = _model_report(module, old, new)
        verdict = _model_verdict(r)
        print(f"| {what} | {r['direct']:.3g} | {r['exact']:.3g} | {r['embedding']:.3g} | {verdict} |")
    print()
    print("| rewrite | network times (x tolerance) | states (x tolerance) | verdict |")
    print("|---|---|---|---|")
    for what, module, old, new in SAMPLER_MISTAKES + SAMPLER_EQUIVALENTS:
        r = _sampler_report(module, old, new)
        verdict = "caught" if max(r.values()) > MARGIN else "passes"
        print(f"| {what} | {r['t_net']:.3g} | {r['state']:.3g} | {verdict} |")


if __name__ == "__main__":
    main()
