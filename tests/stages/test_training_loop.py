"""Training loop: learning, exact resume, distributed sync, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from loopback import START_ATTEMPTS, free_port, port_taken

from stages.training import TrainingError, train
from storage.checkpoints import CheckpointStore
from storage.latents import LatentSpec, create_latent_store
from uvit.config import build_model, get_preset

# A small class-conditional model on 4x8x8 latents that trains in seconds on CPU.
OVERRIDES = {
    "model.embed_dim": 32,
    "model.depth": 2,
    "model.num_heads": 2,
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "train.lr": 3e-3,
    "train.log_interval": 2,
    "train.save_interval": 3,
    "train.sample_interval": 0,
    "train.num_workers": 0,
}


def _preset(**extra):
    return get_preset("tiny", {**OVERRIDES, **extra})


def make_store(url, n=32, shard=8, seed=0, latent=(4, 8, 8), classes=4, spread=1.0):
    """Moments whose means depend on the label (learnable) with tiny variance."""
    rng = np.random.default_rng(seed)
    spec = LatentSpec(num_images=n, shard_size=shard, latent_shape=latent, latent_scale=1.0,
                      encoder={"name": "test"}, moments_dtype="float32", num_classes=classes)  # fmt: skip
    writer = create_latent_store(url, spec)
    labels = rng.integers(0, classes, n)
    c, h, w = latent
    prototypes = rng.normal(size=(classes, c, h, w)) * spread
    mean = prototypes[labels][:, None].repeat(2, axis=1)  # (n, 2, c, h, w)
    mean[:, 1] = mean[:, 1, :, :, ::-1]  # the flip
    logvar = np.full_like(mean, -8.0)
    moments = np.concatenate([mean, logvar], axis=2)  # (n, 2, 2c, h, w)
    for s in writer.pending_shards():
        a, b = spec.shard_range(s)
        writer.write_shard(s, moments[a:b], labels[a:b])
    return url


@pytest.fixture
def store(tmp_path):
    return make_store(str(tmp_path / "latents"))


def _weights(url, step=None):
    ckpt = CheckpointStore(url).load(step)
    return ckpt.model, ckpt.ema


def test_loss_falls_on_a_handful_of_latents(tmp_path, store):
    preset = _preset(**{"train.log_interval": 10, "train.save_interval": 1000, "train.lr": 1e-2,
                        "model.embed_dim": 64})  # fmt: skip
    result = train(preset, store, str(tmp_path / "ckpt"), max_steps=60)
    first, last = result.losses[0][1], result.losses[-1][1]
    assert result.step == 60
    # Stated factor: the mean loss of steps 51-60 is at least 1.5x below that of steps 1-10.
    assert last < first / 1.5, result.losses


# Python's global `random` is shared with every thread of the process, and this test process has
# Prefect's client threads from earlier tests: the websockets library masks each client frame (the
# events client's keep-alive pings, every 20 s) with `random.getrandbits(32)`. Runs in this process
# therefore compare the torch and numpy streams only; the SIGKILL test below runs every training in
# a fresh interpreter (no Prefect) and compares Python's stream too.
IN_PROCESS_IGNORE = (".python",)


def _assert_resumed_run_is_the_uninterrupted_one(full, crashed, uninterrupted, resumed, batch_size, ignore=()):
    """Weights, EMA, every checkpoint's RNG states, the loss history: bit for bit (CPU, fp32)."""
    (m1, e1), (m2, e2) = _weights(full), _weights(crashed)
    assert list(m1) == list(m2)
    for key in m1:
        assert torch.equal(m1[key], m2[key]), key
        assert torch.equal(e1[key], e2[key]), key
    # The report covers the whole run, and the loss logged at step 4 (accumulated over steps 3-4,
    # across the checkpoint at 3) is the same mean as without the crash.
    assert [tuple(x) for x in resumed["losses"]] == [tuple(x) for x in uninterrupted["losses"]]
    assert len(resumed["losses"]) == 5
    assert resumed["samples_seen"] == uninterrupted["samples_seen"] == 9 * batch_size
    # The global RNG states in the checkpoints after the resume are the uninterrupted run's.
    from drills.drillkit import state_differences

    assert CheckpointStore(crashed).steps() == CheckpointStore(full).steps()
    for step in CheckpointStore(crashed).steps():
        a, b = CheckpointStore(full).load(step), CheckpointStore(crashed).load(step)
        assert state_differences(a.rng, b.rng, "rng", ignore) == [], step


def _logging_draws(record):
    """An on_log callback that draws from the global RNGs, as any callback or library in the process may."""
    from drills.drillkit import global_rng_draws

    return lambda step, metrics: record.append([step, global_rng_draws()[:2]])  # torch, numpy


def test_kill_and_resume_is_bit_identical(tmp_path, store, caplog):
    preset = _preset()
    full, crashed = str(tmp_path / "full"), str(tmp_path / "crashed")
    seen_full, seen_crashed = [], []
    uninterrupted = train(preset, store, full, max_steps=9, on_log=_logging_draws(seen_full))
    # "Crash" after 5 steps: the last checkpoint is step 3, steps 4-5 are lost and redone.
    partial = train(preset, store, crashed, max_steps=9, stop_after=5, on_log=_logging_draws(seen_crashed))
    assert partial.step == 5 and CheckpointStore(crashed).latest() == 3
    seen_crashed.clear()
    import logging

    with caplog.at_level(logging.INFO, logger="uvit"):
        resumed = train(preset, store, crashed, max_steps=9, on_log=_logging_draws(seen_crashed))
    assert "train: resumed from checkpoint step 3 of 9" in caplog.messages, caplog.messages
    assert resumed.resumed_from == 3 and resumed.step == 9
    _assert_resumed_run_is_the_uninterrupted_one(full, crashed, vars(uninterrupted), vars(resumed),
                                                 preset.train.batch_size, IN_PROCESS_IGNORE)  # fmt: skip
    # Code in the process draws the same random numbers after the resume as without the crash:
    # the global torch/numpy/Python RNG streams continue from the checkpoint.
    assert seen_crashed == [d for d in seen_full if d[0] > 3] and len(seen_crashed) == 4
    # A second identical run checkpoints the same torch RNG state (nothing else draws from it).
    again = str(tmp_path / "again")
    train(preset, store, again, max_steps=9, stop_after=3, on_log=_logging_draws([]))
    x, y = CheckpointStore(full).load(3).rng[0]["process"], CheckpointStore(again).load(3).rng[0]["process"]
    assert torch.equal(x["torch"], y["torch"])


def test_webdataset_reader_trains_and_resumes_bit_identically(tmp_path, store):
    """data.format=webdataset: the export beside the zarr store is found, and a killed run resumes exactly."""
    from storage.webdataset import export_webdataset

    export = str(tmp_path / "webdataset")  # beside tmp_path/latents, where an encode artifact keeps it
    export_webdataset(store, export, samples_per_shard=4)  # 32 images: 8 shards, 4 batches of 8 an epoch
    preset = _preset(**{"data.format": "webdataset"})
    full, crashed = str(tmp_path / "full"), str(tmp_path / "crashed")
    uninterrupted = train(preset, store, full, max_steps=9)  # the zarr store's URL: its export is read
    partial = train(preset, export, crashed, max_steps=9, stop_after=5)
    assert partial.step == 5 and CheckpointStore(crashed).latest() == 3
    resumed = train(preset, export, crashed, max_steps=9)
    assert resumed.resumed_from == 3 and resumed.step == 9
    _assert_resumed_run_is_the_uninterrupted_one(full, crashed, vars(uninterrupted), vars(resumed),
                                                 preset.train.batch_size, IN_PROCESS_IGNORE)  # fmt: skip
    position = CheckpointStore(full).load(9).data_position
    assert (position["format"], position["epoch"], position["batch_in_epoch"]) == ("webdataset", 2, 1)
    zarr = train(_preset(), store, str(tmp_path / "zarr"), max_steps=9)
    assert zarr.losses != uninterrupted.losses  # the other reader orders the batches otherwise


def test_sigkill_and_resume_in_a_fresh_process_is_bit_identical(tmp_path, store):
    """A child process SIGKILLed right after publishing checkpoint 3, resumed by a new process."""
    import signal

    from drills.drillkit import start_child

    preset = _preset()
    log = tmp_path / "children.log"

    def spec(name, **extra):
        return {"preset": preset.to_json(), "latents": store, "checkpoints": str(tmp_path / name), "max_steps": 9,
                "result_file": str(tmp_path / f"{name}-{len(extra)}.json"), **extra}  # fmt: skip

    def run(child_spec):
        child = start_child(child_spec, "train-loop", log)
        assert child.wait(300) == 0, log.read_text()[-3000:]
        return json.loads(open(child_spec["result_file"]).read())

    # The uninterrupted run in a fresh interpreter too (not this one: see IN_PROCESS_IGNORE), and
    # another process than the resumed one.
    uninterrupted = run(spec("full"))
    doomed = spec("crashed", hang_after_checkpoint=3)
    child = start_child(doomed, "train-loop", log)
    manifest = tmp_path / "crashed" / "step_000000003" / "MANIFEST.json"
    try:
        while not manifest.exists():  # the event: checkpoint 3 is published
            try:
                code = child.wait(0.05)
                raise AssertionError(f"the child ended (exit {code}) before checkpoint 3:\n{log.read_text()[-3000:]}")
            except subprocess.TimeoutExpired:
                pass
    finally:
        child.kill()
    assert child.wait(60) == -signal.SIGKILL
    assert CheckpointStore(str(tmp_path / "crashed")).latest() == 3
    resumed = run(spec("crashed"))
    assert resumed["resumed_from"] == 3 and resumed["step"] == 9
    _assert_resumed_run_is_the_uninterrupted_one(str(tmp_path / "full"), str(tmp_path / "crashed"), uninterrupted,
                                                 resumed, preset.train.batch_size)  # fmt: skip
    assert resumed["draws"] == [d for d in uninterrupted["draws"] if d[0] > 3] and len(resumed["draws"]) == 4


def test_run_killed_after_its_final_checkpoint_still_draws_the_final_preview(tmp_path, store):
    preset = _preset(**{"train.sample_interval": 2, "sample.steps": 3})
    ckpt, previews = str(tmp_path / "ckpt"), tmp_path / "png"
    first = train(preset, store, ckpt, max_steps=4, previews_url=str(previews))
    final = previews / "step_000000004.png"
    expected = final.read_bytes()
    final.unlink()  # as if killed between the final checkpoint and the final grid
    seen = []
    again = train(preset, store, ckpt, max_steps=4, previews_url=str(previews),
                  on_preview=lambda step, url: seen.append(step))  # fmt: skip
    assert again.resumed_from == 4 and seen == [4]
    assert final.read_bytes() == expected
    assert again.losses == first.losses and again.samples_seen == first.samples_seen


def test_store_that_does_not_fit_fails_before_training(tmp_path):
    url = make_store(str(tmp_path / "wrong"), latent=(4, 16, 16))
    with pytest.raises(TrainingError, match=r"moments per image are \(8, 16, 16\), the model needs \(8, 8, 8\)"):
        train(_preset(), url, str(tmp_path / "ckpt"), max_steps=1)
    assert CheckpointStore(str(tmp_path / "ckpt")).latest() is None


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="latent|store|not found|exist"):
        train(_preset(), str(tmp_path / "absent"), str(tmp_path / "ckpt"), max_steps=1)


def test_corrupt_checkpoint_fails_before_training(tmp_path, store):
    ckpt = str(tmp_path / "ckpt")
    train(_preset(), store, ckpt, max_steps=3)
    folder = CheckpointStore(ckpt).url_for(3)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(Exception, match="truncated|corrupt"):
        train(_preset(), store, ckpt, max_steps=6)


def test_grad_accumulation_runs_and_matches_global_batch(tmp_path, store):
    result = train(_preset(**{"train.grad_accum": 2}), store, str(tmp_path / "ckpt"), max_steps=4)
    assert result.step == 4 and result.samples_seen == 4 * 8


def _per_sample_seeded_loss(real_loss):
    """`diffusion.training_loss` with each sample's time and noise drawn from a generator seeded by its
    position in the run, so that the same samples get the same draws however they are batched."""
    seen = [0]

    def loss(model, x0, cond, schedule, generator=None, **kwargs):
        losses = []
        for i in range(x0.shape[0]):
            g = torch.Generator().manual_seed(seen[0] + i)
            c = None if cond is None else cond[i : i + 1]
            losses.append(real_loss(model, x0[i : i + 1], c, schedule, g, **kwargs))
        seen[0] += x0.shape[0]
        return torch.stack(losses).mean()

    return loss


def _close_to_float32_ulps(a, b, ulps=8):
    """Equal to a few float32 ulps of the tensor's magnitude (~1e-6; ~3 seen here under the avx512, avx2 and
    default kernel sets: summation order, not one CPU's kernels)."""
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(a, b, rtol=ulps * eps, atol=ulps * eps * float(a.abs().max()))


def test_grad_accumulation_of_k_micro_batches_equals_one_batch_of_k_times_b(tmp_path, monkeypatch):
    """k micro-batches of b with accumulation take the optimiser step of one batch of k*b.

    Same data (pixel store, no flips, no condition: the loader draws nothing), the same per-sample
    draws, plain SGD in place of AdamW: its step is linear in the gradient, so summation-order ulps
    in the gradient stay ulps in the weights (AdamW's first step g/(|g|+eps) amplifies them where g
    is near eps). Warm-up over 2 steps: the scheduler must count optimiser steps, not micro-batches.
    """
    import uvit.diffusion
    import uvit.training

    real_loss = uvit.diffusion.training_loss
    sgd = lambda model, preset, device=None: torch.optim.SGD(model.parameters(), lr=preset.train.lr)  # noqa: E731
    monkeypatch.setattr(uvit.training, "make_optimizer", sgd)
    url = make_pixel_store(str(tmp_path / "px"), n=16)
    runs = {}
    for k in (1, 2, 4):
        monkeypatch.setattr(uvit.diffusion, "training_loss", _per_sample_seeded_loss(real_loss))
        preset = get_preset("tiny-pixel", {**PIXEL_OVERRIDES, "train.grad_accum": k, "train.lr": 0.5,
                                           "data.random_flip": False, "train.ema_rate": 0.5,
                                           "train.log_interval": 1, "train.save_interval": 3})  # fmt: skip
        result = train(preset, url, str(tmp_path / f"k{k}"), max_steps=3)
        assert result.micro_batch == 8 // k
        runs[k] = (result, *_weights(str(tmp_path / f"k{k}")))
    torch.manual_seed(preset.train.seed)
    initial = build_model(preset).state_dict()
    one, model_1, ema_1 = runs[1]
    moved = max(float((model_1[n] - initial[n]).abs().max() / initial[n].abs().max().clamp_min(1e-3))
                for n in initial)  # fmt: skip
    assert moved > 1e-3  # the steps moved the weights by far more than the tolerance (8 ulps ~ 1e-6)
    for k in (2, 4):
        result, model_k, ema_k = runs[k]
        for name in model_1:
            _close_to_float32_ulps(model_1[name], model_k[name])
            _close_to_float32_ulps(ema_1[name], ema_k[name])
        assert [s for s, _ in result.losses] == [1, 2, 3]
        np.testing.assert_allclose([v for _, v in result.losses], [v for _, v in one.losses], rtol=1e-6)


def test_ema_follows_the_presets_rate(tmp_path, store):
    """rate 0: the EMA is the model; rate 1: it stays the initial weights (both exact)."""
    for rate in (0.0, 1.0):
        preset = _preset(**{"train.ema_rate": rate})
        train(preset, store, str(tmp_path / f"r{rate}"), max_steps=3)
        model, ema = _weights(str(tmp_path / f"r{rate}"))
        torch.manual_seed(preset.train.seed)
        initial = build_model(preset).state_dict()
        assert any(not torch.equal(model[n], initial[n]) for n in model)  # the model moved
        expected = model if rate == 0.0 else initial
        for name in model:
            assert torch.equal(ema[name], expected[name]), (rate, name)


def test_bf16_mixed_precision_runs(tmp_path, store):
    result = train(_preset(**{"train.mixed_precision": "bf16"}), store, str(tmp_path / "ckpt"), max_steps=2)
    assert all(np.isfinite(loss) for _, loss in result.losses)


def test_fp16_on_cpu_is_refused(tmp_path, store):
    with pytest.raises(TrainingError, match="fp16 mixed precision needs a GPU"):
        train(_preset(**{"train.mixed_precision": "fp16"}), store, str(tmp_path / "ckpt"), max_steps=1)


def test_a_non_finite_loss_stops_the_run_before_it_is_logged_or_checkpointed(tmp_path, store, monkeypatch):
    """The loss is read back only when a log line or checkpoint is due; a NaN between them still stops."""
    from uvit import diffusion

    real_loss, calls = diffusion.training_loss, []

    def loss_nan_at_step_2(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(diffusion, "training_loss", loss_nan_at_step_2)
    logged = []
    preset = _preset(**{"train.log_interval": 4, "train.save_interval": 3})
    with pytest.raises(TrainingError, match="loss is nan at a step up to 3; stopping"):
        train(preset, store, str(tmp_path / "ckpt"), max_steps=8, on_log=lambda step, m: logged.append(step))
    assert len(calls) == 3 and logged == []  # steps 1-3 ran, step 3's checkpoint check caught step 2
    assert CheckpointStore(str(tmp_path / "ckpt")).steps() == []


@pytest.mark.slow  # compiling costs 15-60 s on 2 CPU cores
def test_compiled_model_checkpoints_the_models_own_keys_and_resumes(tmp_path, store):
    """`train.compile=true` (the CUDA default): checkpoints hold the plain keys (no `_orig_mod.`), and
    the run resumes from them."""
    preset = _preset(**{"train.compile": True, "train.log_interval": 1, "train.save_interval": 2})
    first = train(preset, store, str(tmp_path / "ckpt"), max_steps=2)
    model, _ = _weights(str(tmp_path / "ckpt"))
    assert sorted(model) == sorted(build_model(preset).state_dict())
    resumed = train(preset, store, str(tmp_path / "ckpt"), max_steps=3)
    assert resumed.resumed_from == 2 and resumed.step == 3
    assert [s for s, _ in resumed.losses] == [1, 2, 3] and resumed.losses[:2] == first.losses


@pytest.mark.slow
def test_two_processes_stay_in_sync(tmp_path, store):
    """Two CPU processes (gloo DDP) split the global batch and end with identical weights."""
    preset = _preset()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    for attempt in range(1, START_ATTEMPTS + 1):
        # The rendezvous binds the port it is given: a new port when another process took it meanwhile.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "stages.training", "--preset-json", preset.to_json(),
               "--latents", store, "--checkpoints", str(tmp_path / "ckpt"), "--max-steps", "4",
               "--result", str(tmp_path / "result.json")]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode == 0 or not port_taken(out.stdout + out.stderr) or attempt == START_ATTEMPTS:
            break
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ckpt = CheckpointStore(str(tmp_path / "ckpt")).load()
    assert ckpt.step == 4 and ckpt.extra["num_processes"] == 2
    assert len(ckpt.rng) == 2  # both ranks' RNG states
    # Each rank drew its own data: the two ranks' loss generators differ.
    assert not torch.equal(ckpt.rng[0]["loss_generator"], ckpt.rng[1]["loss_generator"])
    rank0 = json.loads((tmp_path / "result.json").read_text())
    rank1 = json.loads((tmp_path / "result.json.rank1").read_text())
    assert rank0["micro_batch"] == rank1["micro_batch"] == 4  # the global batch of 8, split in two
    assert rank0["param_checksum"] == rank1["param_checksum"]  # DDP kept the replicas identical
    single = train(preset, store, str(tmp_path / "single"), max_steps=4)
    assert single.param_checksum != rank0["param_checksum"]  # the check can tell runs apart


def _launch_two(preset, store, ckpt, **kwargs):
    """`launch` with 2 CPU processes (gloo), on a fresh port when another process took the first."""
    from stages.training import launch

    for attempt in range(1, START_ATTEMPTS + 1):
        lines = []
        try:
            return launch(preset, store, ckpt, num_processes=2, cpu=True, main_process_port=free_port(),
                          log_line=lines.append, **kwargs)  # fmt: skip
        except TrainingError as e:
            if not port_taken(str(e) + "\n".join(lines)) or attempt == START_ATTEMPTS:
                raise


@pytest.mark.slow
def test_two_machines_train_to_the_weights_of_one_machine_with_two_processes(tmp_path, store):
    """Multi-node for real on one host: two accelerate "machines" (--num_machines 2, --machine_rank 0/1 on
    127.0.0.1, one process each) reach bit for bit the weights of one machine running two processes
    with the same global batch, and every machine reads its own process's summary."""
    import threading

    from stages.training import launch

    preset = _preset()
    reference = _launch_two(preset, store, str(tmp_path / "one-machine"), max_steps=4)

    def machine(rank: int, port: int, result: str, results: dict, errors: dict) -> None:
        try:
            results[rank] = launch(preset, store, str(tmp_path / "two-machines"), num_processes=1, num_machines=2,
                                   machine_rank=rank, main_process_port=port, cpu=True, max_steps=4,
                                   result_path=result)  # fmt: skip
        except TrainingError as e:
            errors[rank] = e

    for attempt in range(1, START_ATTEMPTS + 1):
        port, results, errors = free_port(), {}, {}
        result = str(tmp_path / f"result-{attempt}.json")
        threads = [threading.Thread(target=machine, args=(rank, port, result, results, errors)) for rank in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        if not errors or not any(port_taken(str(e)) for e in errors.values()) or attempt == START_ATTEMPTS:
            break
    assert not errors, errors
    assert results[0]["param_checksum"] == results[1]["param_checksum"] == reference["param_checksum"]
    assert results[0]["micro_batch"] == results[1]["micro_batch"] == reference["micro_batch"] == 4
    assert results[0]["step"] == results[1]["step"] == 4
    ckpt = CheckpointStore(str(tmp_path / "two-machines")).load()
    assert ckpt.step == 4 and ckpt.extra["num_processes"] == 2 and len(ckpt.rng) == 2


def test_eval_weights_are_exported_and_triggered_every_eval_interval(tmp_path, store):
    from uvit.checkpoint import load_state_dict

    preset = _preset(**{"train.eval_interval": 3})
    calls = []
    train(preset, store, str(tmp_path / "ckpt"), max_steps=6, eval_weights_root=str(tmp_path / "run"),
          on_eval=lambda step, url: calls.append((step, url)))  # fmt: skip
    assert [step for step, _ in calls] == [3, 6]
    for step, url in calls:
        exported = load_state_dict(url)
        ema = CheckpointStore(str(tmp_path / "ckpt")).load(step).ema
        assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)


@pytest.mark.slow
def test_two_processes_trigger_periodic_eval_and_refuse_another_process_count(tmp_path, store):
    """Rank 0 exports the eval weights, the launching process triggers; a resume with 1 process is refused."""
    from uvit.checkpoint import load_state_dict

    preset = _preset(**{"train.eval_interval": 3})
    calls = []
    ckpt = str(tmp_path / "ckpt")
    _launch_two(preset, store, ckpt, max_steps=6, eval_weights_root=str(tmp_path / "run"),
                on_eval=lambda step, url: calls.append((step, url)))  # fmt: skip
    assert [step for step, _ in calls] == [3, 6]
    for step, url in calls:
        exported = load_state_dict(url)
        ema = CheckpointStore(ckpt).load(step).ema
        assert all(torch.equal(exported[k], ema[k]) for k in ema)
        build_model(preset).load_state_dict(exported)  # weights that load into the preset's model
    with pytest.raises(TrainingError, match="written by 2 process"):
        train(preset, store, ckpt, max_steps=9)
    # The other way round, through the launcher: one line, not the children's output.
    single = str(tmp_path / "single")
    train(preset, store, single, max_steps=3)
    with pytest.raises(TrainingError, match="written by 1 process") as refused:
        _launch_two(preset, store, single, max_steps=6)
    assert "\n" not in str(refused.value)


def test_previews_are_written_and_do_not_change_training(tmp_path, store):
    preset = _preset(**{"train.sample_interval": 2, "sample.steps": 3})
    seen = []
    with_previews = train(preset, store, str(tmp_path / "a"), max_steps=4, previews_url=str(tmp_path / "png"),
                          on_preview=lambda step, url: seen.append((step, url)))  # fmt: skip
    without = train(preset, store, str(tmp_path / "b"), max_steps=4)
    assert [s for s, _ in seen] == [2, 4]
    from storage.images import read_png

    grid = read_png(seen[-1][1])
    assert grid.shape == (2 + 4 * (32 + 2), 2 + 4 * (32 + 2), 3)  # 4x4 grid of 32x32 images
    assert grid.std() > 1  # not blank
    assert with_previews.param_checksum == without.param_checksum


def test_resume_after_a_kill_right_after_a_checkpoint_finishes_that_step(tmp_path, store, monkeypatch):
    """Killed after a checkpoint's manifest, before pruning and that step's preview (the crash drill
    found it): the resumed run prunes and draws the preview, as an uninterrupted run does."""
    from stages.training import preview_url

    preset = _preset(**{"train.sample_interval": 2, "train.save_interval": 2, "train.keep_last": 1,
                        "sample.steps": 3})  # fmt: skip
    ckpt, png = str(tmp_path / "ckpt"), str(tmp_path / "png")

    class Killed(Exception):
        pass

    def die_at_4(step, url):
        if step == 4:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(CheckpointStore, "prune", lambda self: [])
        with pytest.raises(Killed):
            train(preset, store, ckpt, max_steps=6, previews_url=png, on_checkpoint=die_at_4)
    assert CheckpointStore(ckpt).steps() == [2, 4] and not os.path.exists(preview_url(png, 4))
    train(preset, store, ckpt, max_steps=6, previews_url=png)
    assert CheckpointStore(ckpt).steps() == [6]
    assert all(os.path.exists(preview_url(png, step)) for step in (2, 4, 6))
    uninterrupted = str(tmp_path / "png-ref")
    train(preset, store, str(tmp_path / "ckpt-ref"), max_steps=6, previews_url=uninterrupted)
    for step in (2, 4, 6):
        with open(preview_url(png, step), "rb") as a, open(preview_url(uninterrupted, step), "rb") as b:
            assert a.read() == b.read(), step


# ------------------------------------------------------------------------------------ pixel space
# Patch 4 (64 tokens) learns these images within 60 steps; the preset's patch 8 needs longer.
PIXEL_OVERRIDES = {**OVERRIDES, "model.embed_dim": 64, "model.patch_size": 4, "train.lr": 1e-2,
                   "train.log_interval": 10, "train.save_interval": 1000}  # fmt: skip


def make_pixel_store(url, n=16, shard=8, res=32, classes=0):
    """uint8 images of two flat two-colour patterns (learnable), left/right asymmetric so flips matter."""
    spec = LatentSpec(num_images=n, shard_size=shard, latent_shape=(3, res, res), latent_scale=1.0,
                      encoder={"name": "pixels"}, num_classes=classes, content="pixels")  # fmt: skip
    writer = create_latent_store(url, spec)
    images = np.zeros((n, 1, 3, res, res), np.uint8)
    images[0::2, 0, 0, :, : res // 4] = 255  # red left quarter
    images[1::2, 0, 2, res // 2 :, :] = 200  # blue bottom half
    labels = np.arange(n) % 2 if classes else None
    for s in writer.pending_shards():
        a, b = spec.shard_range(s)
        writer.write_shard(s, images[a:b], None if labels is None else labels[a:b])
    return url


def test_tiny_pixel_loss_falls_and_previews_need_no_vae(tmp_path, monkeypatch):
    import uvit.encoders

    def no_vae(*args, **kwargs):
        raise AssertionError("a pixel preset loaded a VAE")

    monkeypatch.setattr(uvit.encoders, "load_vae", no_vae)
    preset = get_preset("tiny-pixel", {**PIXEL_OVERRIDES, "train.sample_interval": 60, "sample.steps": 3})
    url = make_pixel_store(str(tmp_path / "pixels"))
    previews = []
    result = train(preset, url, str(tmp_path / "ckpt"), max_steps=60, previews_url=str(tmp_path / "png"),
                   on_preview=lambda step, png: previews.append(png))  # fmt: skip
    first, last = result.losses[0][1], result.losses[-1][1]
    assert result.step == 60
    assert last < first / 1.5, result.losses  # steps 51-60 at least 1.5x below steps 1-10
    from storage.images import read_png

    assert read_png(previews[-1]).shape == (2 + 4 * 34, 2 + 4 * 34, 3)  # 4x4 grid of 32x32 pixel samples


def test_class_conditional_pixel_store_trains(tmp_path):
    """The imagenet64 path in small: a pixel store with labels, a class model with a null class."""
    preset = get_preset("tiny-pixel", {**PIXEL_OVERRIDES, "data.conditioning": "class", "data.num_classes": 2,
                                       "model.num_classes": 3, "diffusion.null_class": 2,
                                       "diffusion.p_uncond": 0.1})  # fmt: skip
    result = train(preset, make_pixel_store(str(tmp_path / "px"), classes=2), str(tmp_path / "ckpt"), max_steps=2)
    assert result.step == 2 and all(np.isfinite(loss) for _, loss in result.losses)


def test_wrong_store_kind_is_rejected_before_any_step(tmp_path):
    pixels = make_pixel_store(str(tmp_path / "pixels"))
    with pytest.raises(TrainingError, match="store holds uint8 pixels but preset 'tiny' trains in latent space"):
        train(_preset(), pixels, str(tmp_path / "a"), max_steps=1)
    latents = make_store(str(tmp_path / "latents"))
    with pytest.raises(TrainingError, match="store holds VAE moments but preset 'tiny-pixel' trains in pixel space"):
        train(get_preset("tiny-pixel", PIXEL_OVERRIDES), latents, str(tmp_path / "b"), max_steps=1)
    small = make_pixel_store(str(tmp_path / "small"), res=16)
    with pytest.raises(TrainingError, match=r"pixels per image are \(3, 16, 16\), the model needs \(3, 32"):
        train(get_preset("tiny-pixel", PIXEL_OVERRIDES), small, str(tmp_path / "c"), max_steps=1)
    imagenet_like = get_preset("tiny-pixel", {**PIXEL_OVERRIDES, "data.conditioning": "class", "data.num_classes": 2,
                                              "model.num_classes": 3, "diffusion.null_class": 2})  # fmt: skip
    with pytest.raises(TrainingError, match="the preset is class-conditional but the store has no labels"):
        train(imagenet_like, pixels, str(tmp_path / "d"), max_steps=1)
    for run in "abcd":
        assert CheckpointStore(str(tmp_path / run)).latest() is None


def test_previews_of_a_stochastic_sampler_preset_are_written(tmp_path):
    """cifar10/celeba sample with euler_maruyama, which needs its own generator: previews must pass one."""
    preset = get_preset("tiny-pixel", {**PIXEL_OVERRIDES, "sample.sampler": "euler_maruyama", "sample.steps": 3,
                                       "train.sample_interval": 2})  # fmt: skip
    seen = []
    train(preset, make_pixel_store(str(tmp_path / "px")), str(tmp_path / "ckpt"), max_steps=2,
          previews_url=str(tmp_path / "png"), on_preview=lambda step, url: seen.append(step))  # fmt: skip
    assert seen == [2]
