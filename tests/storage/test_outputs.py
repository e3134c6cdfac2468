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
