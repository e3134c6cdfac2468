"""Make `sampler_golden.safetensors`: what the official U-ViT samplers do, for the parity tests.

Where the data comes from: the official U-ViT code, baofff/U-ViT @ ce551708dc9cde9818d2af7d84dfadfeb7bd9034
(MIT), files `dpm_solver_pp.py`, `dpm_solver_pytorch.py` and `sde.py`, imported unmodified from an
extracted checkout and run on CPU in float32:

- `discrete_dpm_solver.*`: `dpm_solver_pp.DPM_Solver(model_fn, NoiseScheduleVP('discrete', betas=SD
  betas float32), predict_x0=True, thresholding=False).sample(x, steps, eps=1/1000, T=1.)` with
  `model_fn(x, t) = eps(x, t * 1000)`, exactly as `eval_ldm_discrete.py` / `sample_t2i_discrete.py`.
- `vp_dpm_solver.*`: `dpm_solver_pytorch.DPM_Solver(model_wrapper(ScoreModel.noise_pred,
  NoiseScheduleVP('linear'), time_input_type='0')).sample(x, steps, eps=1e-4,
  adaptive_step_size=False, fast_version=True)`, exactly as `eval.py`; the network sees 999 t.
- `vp_euler_maruyama.*`: `sde.euler_maruyama(sde.ReverseSDE(ScoreModel), x, steps)` after
  `torch.manual_seed(seed)` (its noise is `torch.randn_like`), as `eval.py`.
- `discrete_dpm_solver_2m.*`: DPM-Solver++(2M). The official `sample(method='multistep')` raises
  NameError at this commit (`timesteps` is undefined), so this script runs that branch's loop with
  the official update methods (`dpm_multistep_update`, solver_type 'dpm_solver') on the official
  time-uniform grid `get_time_steps('time_uniform', 1., 1/1000, steps)`.

The network is a fixed analytic eps function (`analytic_eps`, which tests/parity.py imports from here):
the exact eps of Gaussian data N(mu, std^2) per channel under a float64 stand-in schedule, plus a small
channel-mixing term. Every call's inputs (x, t_net) and the final output are recorded, for steps
10/25/50 (EM: 10/25). The metadata `official_blobs` holds the git blob ids of the three files run.

Run (needs only torch, numpy, safetensors, absl-py and tqdm, which `sde.py` imports):
    mkdir -p /tmp/uvit_official && for f in dpm_solver_pp.py dpm_solver_pytorch.py sde.py; do
      git -C <U-ViT clone> show HEAD:$f > /tmp/uvit_official/$f; done
    .venv/bin/python tests/data/official/make_sampler_golden.py /tmp/uvit_official
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

OFFICIAL_COMMIT = "ce551708dc9cde9818d2af7d84dfadfeb7bd9034"
SHAPE = (3, 2, 4, 4)  # (B, C, H, W)
DPM_STEPS = (10, 25, 50)
EM_STEPS = (10, 25)
N = 1000
OFFICIAL_FILES = ("dpm_solver_pp.py", "dpm_solver_pytorch.py", "sde.py")


def git_blob_id(path: Path) -> str:
    """The git object id of a file's content (what `git hash-object` prints)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def eps_parameters() -> dict[str, torch.Tensor]:
    """mu, std (C,) of the Gaussian data and the mixing matrix W (C, C)."""
    g = torch.Generator().manual_seed(7)
    C = SHAPE[1]
    return {
        "eps.mu": torch.tensor([0.5, -0.3], dtype=torch.float64),
        "eps.std": torch.tensor([0.6, 1.2], dtype=torch.float64),
        "eps.W": torch.randn(C, C, generator=g, dtype=torch.float64),
    }


def analytic_eps(x: torch.Tensor, t_net: torch.Tensor, kind: str, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """A smooth deterministic eps(x, t_net): Gaussian-data eps + 0.05 sigma W x (float64 inside)."""
    tau = t_net.double()  # (B,)
    if kind == "discrete":
        betas = np.linspace(0.00085**0.5, 0.012**0.5, N, dtype=np.float64) ** 2
        half_log_alpha_bar = 0.5 * np.cumsum(np.log1p(-betas))
        log_alpha = torch.from_numpy(np.interp(tau.numpy(), np.arange(1, N + 1, dtype=np.float64), half_log_alpha_bar))
    else:
        u = tau / 999.0
        log_alpha = -0.25 * u**2 * (20.0 - 0.1) - 0.5 * u * 0.1
    alpha = torch.exp(log_alpha)[:, None, None, None]  # (B, 1, 1, 1)
    sigma2 = -torch.expm1(2 * log_alpha)[:, None, None, None]
    mu = params["eps.mu"][None, :, None, None]
    var = params["eps.std"][None, :, None, None] ** 2
    xd = x.double()
    eps = sigma2.sqrt() * (xd - alpha * mu) / (alpha**2 * var + sigma2)
    eps = eps + 0.05 * sigma2.sqrt() * torch.einsum("oc,bchw->bohw", params["eps.W"], xd)
    return eps.to(x.dtype)


class Recorder:
    """Records every network call (x, t_net) and returns the analytic eps."""

    def __init__(self, kind: str, params: dict[str, torch.Tensor]):
        self.kind, self.params = kind, params
        self.xs: list[torch.Tensor] = []
        self.ts: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        t_net = t_net.reshape(-1).expand(x.shape[0]) if t_net.numel() == 1 else t_net
        self.xs.append(x.detach().clone())
        self.ts.append(t_net.detach().clone().float())
        return analytic_eps(x, t_net, self.kind, self.params)

    def tensors(self, prefix: str, output: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.x_calls": torch.stack(self.xs).contiguous(),  # (NFE, B, C, H, W)
            f"{prefix}.t_net_calls": torch.stack(self.ts).contiguous(),  # (NFE, B)
            f"{prefix}.output": output.contiguous(),
        }


def discrete_model_fn(rec: Recorder):
    """`model_fn(x, t_continuous)` of the official discrete scripts: the network sees t * N."""
    return lambda x, t_continuous: rec(x, t_continuous * N)


def sd_betas_float32() -> torch.Tensor:
    """The betas as the official discrete scripts build them (float64 numpy, then .float())."""
    betas = torch.linspace(0.00085**0.5, 0.0120**0.5, N, dtype=torch.float64) ** 2
    return torch.tensor(betas.numpy()).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="folder holding the official dpm_solver_pp.py etc.")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sampler_golden.safetensors"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.official.resolve()))
    dpm_pp = importlib.import_module("dpm_solver_pp")
    dpm_orig = importlib.import_module("dpm_solver_pytorch")
    sde = importlib.import_module("sde")

    torch.set_default_dtype(torch.float32)
    params = eps_parameters()
    out: dict[str, torch.Tensor] = dict(params)

    for steps in DPM_STEPS:
        x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + steps))
        out[f"x_T.steps{steps}"] = x_T

        # Discrete latent models: DPM-Solver++ fast order 3 (eval_ldm_discrete.py).
        rec = Recorder("discrete", params)
        ns = dpm_pp.NoiseScheduleVP(schedule="discrete", betas=sd_betas_float32())
        solver = dpm_pp.DPM_Solver(discrete_model_fn(rec), ns, predict_x0=True, thresholding=False)
        output = solver.sample(x_T.clone(), steps=steps, eps=1.0 / N, T=1.0)
        assert len(rec.xs) == steps, (steps, len(rec.xs))
        out.update(rec.tensors(f"discrete_dpm_solver.steps{steps}", output))

        # Discrete DPM-Solver++(2M): the official multistep loop with the official update methods.
        rec = Recorder("discrete", params)
        solver = dpm_pp.DPM_Solver(discrete_model_fn(rec), ns, predict_x0=True, thresholding=False)
        timesteps = solver.get_time_steps(skip_type="time_uniform", t_T=1.0, t_0=1.0 / N, N=steps, device="cpu")
        x, order = x_T.clone(), 2
        with torch.no_grad():
            vec_t = timesteps[0].expand(x.shape[0])
            model_prev = [solver.model_fn(x, vec_t)]
            t_prev = [vec_t]
            vec_t = timesteps[1].expand(x.shape[0])
            x = solver.dpm_multistep_update(x, model_prev, t_prev, vec_t, 1, solver_type="dpm_solver")
            if steps > 1:
                model_prev.append(solver.model_fn(x, vec_t))
                t_prev.append(vec_t)
            for step in range(order, steps + 1):
                vec_t = timesteps[step].expand(x.shape[0])
                x = solver.dpm_multistep_update(x, model_prev, t_prev, vec_t, order, solver_type="dpm_solver")
                model_prev[0], t_prev[0] = model_prev[1], t_prev[1]
                t_prev[-1] = vec_t
                if step < steps:
                    model_prev[-1] = solver.model_fn(x, vec_t)
        assert len(rec.xs) == steps, (steps, len(rec.xs))
        out.update(rec.tensors(f"discrete_dpm_solver_2m.steps{steps}", x))

        # Continuous (VP-SDE) models: the original DPM-Solver-fast (eval.py).
        rec = Recorder("vp", params)
        score_model = sde.ScoreModel(rec, pred="noise_pred", sde=sde.VPSDE(0.1, 20))
        ns = dpm_orig.NoiseScheduleVP(schedule="linear")
        model_fn = dpm_orig.model_wrapper(score_model.noise_pred, ns, time_input_type="0", model_kwargs={})
        output = dpm_orig.DPM_Solver(model_fn, ns).sample(
            x_T.clone(), steps=steps, eps=1e-4, adaptive_step_size=False, fast_version=True
        )
        assert len(rec.xs) == steps, (steps, len(rec.xs))
        out.update(rec.tensors(f"vp_dpm_solver.steps{steps}", output))

    for steps in EM_STEPS:
        x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2000 + steps))
        out[f"x_T.em_steps{steps}"] = x_T
        rec = Recorder("vp", params)
        score_model = sde.ScoreModel(rec, pred="noise_pred", sde=sde.VPSDE(0.1, 20))
        seed = 3000 + steps
        out[f"vp_euler_maruyama.steps{steps}.seed"] = torch.tensor([seed], dtype=torch.int64)
        torch.manual_seed(seed)
        output = sde.euler_maruyama(sde.ReverseSDE(score_model), x_T.clone(), steps)
        assert len(rec.xs) == steps, (steps, len(rec.xs))
        out.update(rec.tensors(f"vp_euler_maruyama.steps{steps}", output))

    metadata = {
        "source": f"baofff/U-ViT @ {OFFICIAL_COMMIT} (dpm_solver_pp.py, dpm_solver_pytorch.py, sde.py)",
        # git blob ids of the files actually run: compare with `git ls-tree <commit>` of the official repo.
        "official_blobs": json.dumps({name: git_blob_id(args.official / name) for name in OFFICIAL_FILES}),
        "generator": "tests/data/official/make_sampler_golden.py",
        "torch": torch.__version__,
        "shape": str(SHAPE),
    }
    save_file(out, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {len(out)} tensors)")


if __name__ == "__main__":
    main()
