"""`make bench-gpu`: the GPU figures in one run (under 8 minutes on one GPU), each against its baseline.

Sections, each guarded (an error is printed and recorded, and the next section runs):
- env: the GPU, torch, the peak dense bf16 FLOP/s of known GPUs (PEAK_BF16; unknown: none, MFU not given).
- attention: which SDPA kernels one bf16 training step of each model runs (profiler kernel names), and
  whether ours runs under `sdpa_kernel(FLASH_ATTENTION)` alone (the official model casts q/k/v to
  float32, where no flash kernel exists).
- train: U-ViT-H/2 training steps/s at batch 128 in bf16, the whole train stage (`stages.training.train`,
  its defaults: compiled on CUDA) against the official `train_ldm_discrete.py` step on the same batches
  and the same GPU (`benchmarks.train_vs_official`), and the model FLOP utilisation (3x the forward's
  FLOPs, counted by `torch.utils.flop_counter`, without gradient checkpointing's recomputation).
- sampling: seconds for 500 ImageNet-256 samples with H/2 and 50 DPM-Solver steps (`uvit.sampling.generate`,
  bf16 autocast): without guidance (the paper: about 89 s on an A100), with guidance s=0.4 (batched), and
  the official `dpm_solver_pp` guided path on one batch, extrapolated, with the final latents compared.
- vae: JPEG decode at 256 px (torchvision on the GPU, nvjpeg, against the CPU), Stable-Diffusion-sized VAE
  encode images/s (random weights: there is no hub access), and the two together.
- inception: Inception-v3 features/s (`uvit.inception`, random weights) at 256 px.

`--device cpu --tiny` shrinks everything (tiny dims, a few steps, small batches) for CI. Results are
printed as they come and written to `--out` (JSON, and markdown beside it) after every section.
The official code: `--official PATH` or `UVIT_OFFICIAL_REPO` (a checkout or a git repository of it), or
`.uvit-official/` in the repository (`--export-official SRC` writes the files needed there).

    python -m benchmarks.gpu_suite [--device cuda|cpu] [--tiny] [--out bench-gpu.json] [--only train]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
LOCAL_OFFICIAL = ROOT / ".uvit-official"
SECTIONS = ("env", "attention", "train", "sampling", "vae", "inception")
# Peak dense bf16 tensor FLOP/s by device name (first match wins; the PCIe H100 before the SXM parts).
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("L4", 121e12))  # fmt: skip
PAPER_500_SAMPLES_S = 89.0  # U-ViT-H/2, 500 samples, DPM-Solver 50 steps, one A100, no guidance (paper appendix)
# Sizes of each section: the GPU run (about 5-6 minutes on an H100/H200) and `--tiny` (CI, on a CPU).
SIZES = {
    "full": dict(attention_batch=16, train_batch=128, train_blocks=4, train_block=5, samples=500, sample_batch=250,
                 sample_steps=50, image_size=256, vae_images=256, vae_batch=32, inception_size=256,
                 inception_images=1000, inception_batch=200),
    "tiny": dict(attention_batch=4, train_batch=4, train_blocks=2, train_block=1, samples=4, sample_batch=2,
                 sample_steps=3, image_size=32, vae_images=4, vae_batch=2, inception_size=32, inception_images=4,
                 inception_batch=2),
}  # fmt: skip


def peak_bf16(name: str) -> float | None:
    """The GPU's peak dense bf16 FLOP/s from PEAK_BF16, or None for an unknown device."""
    for key, flops in PEAK_BF16:
        if key in name:
            return flops
    return None


class Suite:
    """Collects rows {section, figure, value, unit, baseline, ratio, note}; writes them after each section."""

    def __init__(self, out: Path | None, settings: dict):
        self.rows: list[dict] = []
        self.errors: list[dict] = []
        self.out = out
        self.settings = settings
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def add(self, section: str, figure: str, value: float | None, unit: str, baseline: str = "-",
            ratio: float | None = None, note: str = "") -> None:  # fmt: skip
        row = {"section": section, "figure": figure, "value": value, "unit": unit, "baseline": baseline,
               "ratio": ratio, "note": note}  # fmt: skip
        self.rows.append(row)
        ratio_text = f" ({ratio:.2f}x)" if ratio is not None else ""
        shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
        self.log(f"{section}: {figure}: {shown} {unit}{ratio_text} vs {baseline} {note}".rstrip())

    def section(self, name: str, fn: Callable[[], None], stop_after_s: float = math.inf) -> None:
        if self.elapsed() > stop_after_s:  # leave time to write what was measured
            self.errors.append({"section": name, "error": f"not started: past {stop_after_s:.0f} s"})
            self.log(f"== {name} skipped: past {stop_after_s:.0f} s")
            self.write()
            return
        self.log(f"== {name}")
        begun = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one broken section must not cost the others' figures
            self.errors.append({"section": name, "error": f"{type(e).__name__}: {e}"})
            self.log(f"{name} FAILED: {type(e).__name__}: {e}")
            traceback.print_exc()
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.log(f"{name} took {time.perf_counter() - begun:.1f} s")
        self.write()

    def markdown(self) -> str:
        lines = [f"GPU suite ({self.settings.get('device_name')}, torch {torch.__version__}, "
                 f"{self.elapsed():.0f} s)", "", "| section | figure | value | baseline | ratio | note |",
                 "|---|---|---|---|---|---|"]  # fmt: skip
        for r in self.rows:
            value = f"{r['value']:,.4g} {r['unit']}" if isinstance(r["value"], float) else f"{r['value']} {r['unit']}"
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            lines.append(f"| {r['section']} | {r['figure']} | {value} | {r['baseline']} | {ratio} | {r['note']} |")
        lines += [f"\nFailed: {e['section']}: {e['error']}" for e in self.errors]
        return "\n".join(lines)

    def write(self) -> None:
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"settings": self.settings, "rows": self.rows, "errors": self.errors, "seconds": self.elapsed()}
        self.out.write_text(json.dumps(payload, indent=1, default=str))
        self.out.with_suffix(".md").write_text(self.markdown() + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _official_parts(official: str | None, suite: Suite):
    """The official training pieces, or None (then the sections measure ours alone)."""
    from benchmarks.sampling_official import official_checkout
    from benchmarks.train_vs_official import TRAIN_FILES, official_train_parts

    if not official:
        suite.log("no official code (--official, UVIT_OFFICIAL_REPO or .uvit-official/): ours only")
        return None, None
    with official_checkout(official, TRAIN_FILES) as repo:
        parts = official_train_parts(repo)
        from benchmarks.sampling_official import _load_dpm_solver_pp

        dpm_solver_pp = _load_dpm_solver_pp(repo)
    return parts, dpm_solver_pp


# ------------------------------------------------------------------------------------------ sections
def env_section(suite: Suite, device: torch.device) -> None:
    name = suite.settings["device_name"]
    suite.add("env", f"device {name}, torch {torch.__version__}", float(torch.cuda.device_count()), "GPUs")
    peak = peak_bf16(name) if device.type == "cuda" else None
    suite.add("env", "peak dense bf16 (table by name)", peak / 1e12 if peak else None, "TFLOP/s",
              note="" if peak else "unknown device: FLOP/s only, no MFU")  # fmt: skip


def _models(cfg: dict, parts, device: torch.device):
    from uvit.model import UViT

    torch.manual_seed(0)
    with torch.device(device):  # initialised where they run: seconds, not a minute, for H/2
        ours = UViT(**cfg)
        theirs = parts.UViT(**cfg) if parts is not None else None
    if theirs is not None:
        ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _train_batch(cfg: dict, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    size = cfg["img_size"]
    x = torch.randn(batch, cfg["in_chans"], size, size, generator=g).to(device)
    t = torch.randint(1, 1001, (batch,), generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return x, t, y


def attention_section(suite: Suite, device: torch.device, cfg: dict, batch: int, amp, parts) -> None:
    from torch.profiler import ProfilerActivity, profile

    ours, theirs = _models(cfg, parts, device)
    x, t, y = _train_batch(cfg, batch, device)

    def step(model):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x, t, y)
        out.float().square().mean().backward()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, model in (("ours", ours), ("official", theirs)):
        if model is None:
            continue
        step(model)  # warm-up
        with profile(activities=activities) as prof:
            step(model)
            _sync(device)
        kernels = sorted({e.key for e in prof.key_averages() if "attention" in e.key.lower() or "flash" in e.key.lower()
                          or "fmha" in e.key.lower() or "sdpa" in e.key.lower()})  # fmt: skip
        flash = [k for k in kernels if "flash" in k.lower()]
        dtype = str(amp).removeprefix("torch.") if amp is not None else "float32"
        suite.add("attention", f"{name}: flash SDPA kernels in one {dtype} training step", float(len(flash)), "kernels",
                  note="; ".join(kernels)[:400] or "no attention kernels named")  # fmt: skip
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                step(ours)
                _sync(device)
            suite.add("attention", "ours: a training step under sdpa_kernel(FLASH_ATTENTION) alone", 1.0, "ran")
        except RuntimeError as e:
            suite.add("attention", "ours: a training step under sdpa_kernel(FLASH_ATTENTION) alone", 0.0, "ran",
                      note=f"refused: {str(e)[:200]}")  # fmt: skip


def forward_flops(cfg: dict, batch: int, device: torch.device, amp) -> float:
    """FLOPs of one forward of the model at `batch` (torch.utils.flop_counter: matmuls, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    from uvit.model import UViT

    with torch.device(device):
        model = UViT(**{**cfg, "use_checkpoint": False}).eval()
    x, t, y = _train_batch(cfg, batch, device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        model(x, t, y)
    del model
    return float(counter.get_total_flops())


def train_section(suite: Suite, device: torch.device, model: str, batch: int, amp: str, blocks: int, block: int,
                  parts) -> None:  # fmt: skip
    from benchmarks.train_vs_official import AMP, MODEL_NAMES, MODELS, compare

    with tempfile.TemporaryDirectory(prefix="gpu_suite_train_") as tmp:
        try:
            got = compare(parts, model, batch, device, amp, block, blocks, "auto", Path(tmp), progress=suite.log)
        except Exception as e:  # a compiler failure must not cost the figure: eager, and say so
            suite.errors.append({"section": "train (train.compile=auto)", "error": f"{type(e).__name__}: {e}"})
            suite.log(f"train with train.compile=auto FAILED ({type(e).__name__}: {e}); again with compile off")
            traceback.print_exc()
            got = compare(parts, model, batch, device, amp, block, blocks, False, Path(tmp), progress=suite.log)
    mode = "compiled" if got["compiled"] else "eager"
    ours = 1.0 / got["stage_s"]
    baseline, ratio = "official not run", None
    if got["official_s"] is not None:
        baseline = f"{1.0 / got['official_s']:.3f} steps/s (official train_ldm_discrete.py step, same batches)"
        ratio = got["official_s"] / got["stage_s"]
    suite.add("train", f"{MODEL_NAMES[model]} training, batch {batch}, amp={amp}: whole train stage ({mode})",
              ours, "steps/s", baseline, ratio,
              note=f"median of {got['timed_steps']} steps; first block incl. set-up and compilation "
              f"{got['first_block_s']:.0f} s")  # fmt: skip
    flops = 3.0 * forward_flops(MODELS[model], batch, device, AMP[amp])
    peak = peak_bf16(suite.settings["device_name"]) if device.type == "cuda" else None
    suite.add("train", "model FLOPs per training step (3x forward, no recomputation)", flops / 1e12, "TFLOP")
    suite.add("train", "achieved model FLOP/s (ours)", flops * ours / 1e12, "TFLOP/s")
    if got["official_s"] is not None:
        suite.add("train", "achieved model FLOP/s (official)", flops / got["official_s"] / 1e12, "TFLOP/s")
    if peak:
        suite.add("train", "model FLOP utilisation (ours)", 100.0 * flops * ours / peak, "%",
                  f"peak {peak / 1e12:.0f} TFLOP/s dense bf16")  # fmt: skip
        if got["official_s"] is not None:
            suite.add("train", "model FLOP utilisation (official)", 100.0 * flops / got["official_s"] / peak, "%",
                      f"peak {peak / 1e12:.0f} TFLOP/s dense bf16")  # fmt: skip


def sampling_section(suite: Suite, device: torch.device, cfg: dict, n: int, mini_batch: int, steps: int, amp,
                     parts, dpm_solver_pp, budget_s: float) -> None:  # fmt: skip
    from benchmarks.sampling_official import CFG_SCALE, NULL_LABEL, official_sample
    from uvit.diffusion import DiscreteSchedule
    from uvit.sampling import generate

    ours, theirs = _models(cfg, parts, device)
    ours.eval()
    size, chans = cfg["img_size"], cfg["in_chans"]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, chans, size, size, generator=g).to(device)  # (N, C, h, w)
    labels = torch.randint(0, NULL_LABEL, (n,), generator=g).to(device)
    schedule = DiscreteSchedule()

    def ours_all(cfg_scale: float) -> torch.Tensor:
        outs = []
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            for i in range(0, n, mini_batch):
                part = slice(i, i + mini_batch)
                outs.append(generate(ours, z[part], schedule=schedule, sampler="dpm_solver", steps=steps,
                                     cfg_scale=cfg_scale, labels=labels[part], null_label=NULL_LABEL))  # fmt: skip
        return torch.cat(outs)

    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):  # warm-up: one NFE
        generate(ours, z[:mini_batch], schedule=schedule, sampler="dpm_solver", steps=1, labels=labels[:mini_batch])
    seconds = _timed(lambda: ours_all(0.0), device)
    paper = f"paper: about {PAPER_500_SAMPLES_S:.0f} s on an A100 (500 samples)" if n == 500 else "-"
    suite.add("sampling", f"{n} samples, {steps} DPM-Solver steps, no guidance, batch {mini_batch}: ours", seconds,
              "s", paper, PAPER_500_SAMPLES_S / seconds if n == 500 else None)  # fmt: skip
    if suite.elapsed() > budget_s:
        suite.log(f"sampling: over the {budget_s:.0f} s budget, guided runs skipped")
        return
    guided: dict[str, torch.Tensor] = {}
    seconds_guided = _timed(lambda: guided.setdefault("ours", ours_all(CFG_SCALE)), device)
    suite.add("sampling", f"{n} samples, {steps} steps, guidance s={CFG_SCALE} (batched): ours", seconds_guided, "s")
    if theirs is None or dpm_solver_pp is None or suite.elapsed() > budget_s:
        return
    theirs.eval()
    one = slice(0, mini_batch)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        official_batch: dict[str, torch.Tensor] = {}
        batch_s = _timed(lambda: official_batch.setdefault("z", official_sample(
            dpm_solver_pp, theirs, z[one].clone(), labels[one], steps)), device)  # fmt: skip
    ref, mine = official_batch["z"].float(), guided["ours"][one].float()
    rel = ((mine - ref).abs().max() / ref.abs().max()).item()
    extrapolated = batch_s * n / min(mini_batch, n)
    suite.add("sampling", f"{n} samples, {steps} steps, guidance s={CFG_SCALE}: official dpm_solver_pp path "
              f"(one batch of {min(mini_batch, n)}, extrapolated)", extrapolated, "s",
              f"ours {seconds_guided:.1f} s", extrapolated / seconds_guided,
              note=f"final latents of that batch: relative max difference {rel:.1e} (bf16 autocast)")  # fmt: skip


def _jpegs(count: int, size: int) -> list[torch.Tensor]:
    """`count` encoded JPEGs of smooth random `size` x `size` images (quality 90)."""
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(0)
    small = torch.rand(count, 3, size // 16, size // 16, generator=g)
    images = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    images = (images * 255).round().to(torch.uint8)  # (N, 3, size, size)
    return [encode_jpeg(img, quality=90) for img in images]


def sd_vae(tiny: bool):
    """A Stable-Diffusion-sized AutoencoderKL (random weights), or a narrow one for `--tiny`."""
    from diffusers import AutoencoderKL

    channels = (32, 32, 32, 32) if tiny else (128, 256, 512, 512)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=channels, layers_per_block=2,
                         latent_channels=4, norm_num_groups=32, sample_size=256)  # fmt: skip


def vae_section(suite: Suite, device: torch.device, size: int, count: int, batch: int, tiny: bool) -> None:
    from torchvision.io import decode_jpeg

    from uvit.encoders import encode_moments

    jpegs = _jpegs(count, size)
    cpu_s = min(_timed(lambda: decode_jpeg(jpegs), torch.device("cpu")) for _ in range(2))
    suite.add("vae", f"JPEG decode {size} px, {count} images: CPU (torchvision)", count / cpu_s, "img/s")
    gpu_decode = device.type == "cuda"
    if gpu_decode:
        try:
            decode_jpeg(jpegs[:2], device=device)  # warm-up (nvjpeg)
            gpu_s = min(_timed(lambda: decode_jpeg(jpegs, device=device), device) for _ in range(2))
            suite.add("vae", f"JPEG decode {size} px, {count} images: GPU (torchvision nvjpeg)", count / gpu_s,
                      "img/s", f"CPU {count / cpu_s:,.0f} img/s", cpu_s / gpu_s)  # fmt: skip
        except RuntimeError as e:
            gpu_decode = False
            suite.add("vae", "JPEG decode on the GPU", None, "img/s", note=f"not available: {str(e)[:200]}")
    vae = sd_vae(tiny).to(device).eval()
    images = [decode_jpeg(j, device=device) if gpu_decode else decode_jpeg(j).to(device) for j in jpegs[:batch]]
    x = torch.stack(images).float() / 127.5 - 1.0  # (B, 3, size, size) in [-1, 1]
    encode_moments(vae, x[:2])  # warm-up
    rounds = max(1, count // batch)
    seconds = _timed(lambda: [encode_moments(vae, x) for _ in range(rounds)], device)
    encode_rate = rounds * len(x) / seconds
    suite.add("vae", f"SD-sized VAE encode to moments, {size} px, batch {len(x)}, fp32 (as the encode stage)",
              encode_rate, "img/s", note="random weights" + (", narrow channels (tiny)" if tiny else ""))  # fmt: skip

    def decode_and_encode() -> None:
        for i in range(0, count, batch):
            chunk = jpegs[i : i + batch]
            decoded = decode_jpeg(chunk, device=device) if gpu_decode else [decode_jpeg(j).to(device) for j in chunk]
            encode_moments(vae, torch.stack(decoded).float() / 127.5 - 1.0)

    both = _timed(decode_and_encode, device)
    where = "GPU" if gpu_decode else "CPU"
    suite.add("vae", f"JPEG decode ({where}) + VAE encode, {count} images", count / both, "img/s",
              f"encode alone {encode_rate:,.1f} img/s", (count / both) / encode_rate)  # fmt: skip


def inception_section(suite: Suite, device: torch.device, size: int, count: int, batch: int) -> None:
    from uvit.inception import load_inception

    extractor = load_inception(None, allow_random=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    if device.type == "cuda":
        for _ in extractor.stream([images[:2]], device=device):  # warm-up (cuDNN's algorithm choice)
            pass
    rounds = max(1, count // batch)
    seconds = _timed(lambda: [None for _ in extractor.stream([images] * rounds, device=device)], device)
    suite.add("inception", f"Inception-v3 pool + logits + spatial features, {size} px uint8, batch {batch}",
              rounds * batch / seconds, "img/s", note="random weights; resized to 299 inside")  # fmt: skip


# ---------------------------------------------------------------------------------------------- main
def export_official(source: str, dest: Path = LOCAL_OFFICIAL) -> Path:
    """Write the official files the suite runs (from a checkout or a git repository) to `dest`."""
    from benchmarks.sampling_official import official_checkout
    from benchmarks.train_vs_official import TRAIN_FILES

    with official_checkout(source, TRAIN_FILES) as repo:
        for name in TRAIN_FILES:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((repo / name).read_bytes())
    return dest


def run(device: str = "cuda", tiny: bool = False, official: str | None = None, out: str | None = None,
        only: list[str] | None = None, budget_s: float = 360.0, stop_after_s: float = 480.0) -> Suite:  # fmt: skip
    """Run the sections; return the suite (rows, errors).

    Past `budget_s` the optional runs (guided and official sampling) are skipped; sections not started by
    `stop_after_s` are skipped (the results so far are written either way).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: use --device cpu (with --tiny for a quick run)")
    if official is None:
        official = os.environ.get("UVIT_OFFICIAL_REPO") or (str(LOCAL_OFFICIAL) if LOCAL_OFFICIAL.is_dir() else None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    settings = {"device": device, "device_name": name, "tiny": tiny, "official": official, "torch": torch.__version__,
                "budget_s": budget_s}  # fmt: skip
    suite = Suite(Path(out) if out else None, settings)
    suite.log(f"GPU suite on {name}, tiny={tiny}, official code: {official or 'none'}")
    from benchmarks.train_vs_official import MODELS

    model = "tiny" if tiny else "h2"
    cfg = MODELS[model]
    amp_name = "bf16" if dev.type == "cuda" else "no"
    amp = {"bf16": torch.bfloat16, "no": None}[amp_name]
    parts, dpm_solver_pp = None, None
    try:
        parts, dpm_solver_pp = _official_parts(official, suite)
    except Exception as e:
        suite.errors.append({"section": "official code", "error": f"{type(e).__name__}: {e}"})
        suite.log(f"official code not loaded ({type(e).__name__}: {e}): ours only")
    chosen = only or list(SECTIONS)
    z = SIZES["tiny" if tiny else "full"]
    attention_amp = torch.bfloat16 if dev.type == "cuda" else None
    plans = {
        "env": lambda: env_section(suite, dev),
        "attention": lambda: attention_section(suite, dev, cfg, z["attention_batch"], attention_amp, parts),
        "train": lambda: train_section(suite, dev, model, z["train_batch"], amp_name, z["train_blocks"],
                                       z["train_block"], parts),
        "sampling": lambda: sampling_section(suite, dev, cfg, z["samples"], z["sample_batch"], z["sample_steps"],
                                             amp, parts, dpm_solver_pp, budget_s),
        "vae": lambda: vae_section(suite, dev, z["image_size"], z["vae_images"], z["vae_batch"], tiny),
        "inception": lambda: inception_section(suite, dev, z["inception_size"], z["inception_images"],
                                               z["inception_batch"]),
    }  # fmt: skip
    for section in chosen:
        if section not in plans:
            raise ValueError(f"unknown section {section!r}; valid: {', '.join(SECTIONS)}")
        suite.section(section, plans[section], stop_after_s)
    suite.log(f"done in {suite.elapsed():.0f} s; {len(suite.rows)} rows, {len(suite.errors)} failed sections")
    print(suite.markdown(), flush=True)
    suite.write()
    return suite


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 1 when a section failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny dims, a few steps, small batches (CI)")
    parser.add_argument("--official", default=None, help="baofff/U-ViT checkout or git repository")
    parser.add_argument("--out", default=None, help="write the results here as JSON (and .md beside it)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip optional runs once past this (s)")
    parser.add_argument("--stop-after-s", type=float, default=480.0, help="start no section past this (s)")
    parser.add_argument("--export-official", metavar="SRC", default=None,
                        help=f"write the official files needed from SRC (checkout or git repository) to "
                        f"{LOCAL_OFFICIAL.name}/ and exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.export_official:
        print(f"official files written to {export_official(args.export_official)}")
        return 0
    suite = run(args.device, args.tiny, args.official, args.out, args.only, args.budget_s, args.stop_after_s)
    return 1 if suite.errors else 0


if __name__ == "__main__":
    sys.exit(main())
