"""storage.outputs: artifact file names and the encode part-file format."""

import numpy as np
import pytest

from storage import outputs


@pytest.mark.parametrize("root", ["local", "memory"])
def test_part_file_round_trips_arrays_and_problems(tmp_path, root) -> None:
    base = str(tmp_path) if root == "local" else "memory://outputs-test"
    url = f"{base}/parts/{outputs.part_name(3)}"
    arrays = {"moments": np.arange(24, dtype=np.float16).reshape(1, 2, 3, 2, 2), "labels": np.array([7])}
    problems = [{"item": "a.jpg", "action": "skipped", "reason": "zero-byte file"}]
    outputs.write_part(url, arrays, problems)
    back = outputs.read_part(url)
    assert back["problems"] == problems and set(back) == {"moments", "labels", "problems"}
    np.testing.assert_array_equal(back["moments"], arrays["moments"])
    assert back["moments"].dtype == np.float16 and back["labels"].dtype == arrays["labels"].dtype
    assert outputs.finished_parts(f"{base}/parts") == {"part_000003.npz"}


def test_problems_is_reserved_and_names_are_fixed(tmp_path) -> None:
    with pytest.raises(ValueError, match="problems"):
        outputs.write_part(str(tmp_path / "p.npz"), {"problems": np.zeros(1)}, [])
    assert not (tmp_path / "p.npz").exists()
    assert outputs.part_name(12) == "part_000012.npz" and outputs.sample_shard_name(5) == "shard_000005.npz"
    assert outputs.eval_weights(40) == ("evals", "step_000000040", "nnet_ema.safetensors")
    assert outputs.STORE_FOLDER == {"moments": "latents", "pixels": "pixels"}


@pytest.mark.parametrize("root", ["local", "memory"])
def test_streamed_npz_is_what_np_savez_writes(tmp_path, root) -> None:
    """samples.npz built batch by batch: np.load reads the same arr_0 and labels as a whole-array savez."""
    import io

    from storage.images import write_npz_stream

    base = str(tmp_path) if root == "local" else "memory://npz-stream"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(10)
    url = f"{base}/samples.npz"
    shape = write_npz_stream(url, (images[i : i + 3] for i in range(0, 10, 3)), 10, labels=labels)
    assert shape == (10, 4, 5, 3)
    from storage import paths

    fs, path = paths.filesystem(url)
    with np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) as data:
        assert sorted(data.files) == ["arr_0", "labels"]
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["labels"], labels)
    with pytest.raises(ValueError, match="9 images written, 10 announced"):
        write_npz_stream(f"{base}/short.npz", iter([images[:9]]), 10)
    with pytest.raises(ValueError, match="does not match"):
        write_npz_stream(f"{base}/mixed.npz", iter([images[:2], images[:2, :3]]), 4)
    assert not fs.exists(paths.filesystem(f"{base}/short.npz")[1])  # nothing published from a failed write
    if root == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]  # no temporary file left


def test_a_checkpoint_folder_resolves_to_its_weights(tmp_path) -> None:
    official = tmp_path / "500000.ckpt"  # what the official train_ldm_discrete.py writes
    official.mkdir()
    for name in ("nnet.pth", "nnet_ema.pth", "optimizer.pth", "step.pth"):
        (official / name).write_bytes(b"x")
    assert outputs.resolve_weights(str(official)).endswith("500000.ckpt/nnet_ema.pth")
    assert outputs.resolve_weights(str(official), ema=False).endswith("500000.ckpt/nnet.pth")
    ours = tmp_path / "step_000000050"
    ours.mkdir()
    (ours / "ema.safetensors").write_bytes(b"x")
    (ours / "model.safetensors").write_bytes(b"x")
    assert outputs.resolve_weights(str(ours)).endswith("step_000000050/ema.safetensors")
    assert outputs.resolve_weights(str(ours), ema=False).endswith("model.safetensors")
    assert outputs.resolve_weights(str(official / "nnet.pth")) == str(official / "nnet.pth")  # a file is itself
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no EMA weights: looked for nnet_ema.pth, nnet_ema.safetensors"):
        outputs.resolve_weights(str(empty))
    with pytest.raises(FileNotFoundError, match="checkpoint .*nnet_ema.pth does not exist: pass a weights file"):
        outputs.resolve_weights(str(tmp_path / "nnet_ema.pth"))  # a typo: one line saying what it takes
