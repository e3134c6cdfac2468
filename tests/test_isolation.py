"""tests/conftest.py keeps the suite away from the user's caches and settings (it must hold whatever the
shell that started pytest had set)."""

import os
from pathlib import Path

# The session's cache folder (tests/conftest.py's CACHE_ROOT; a conftest is not importable by name).
CACHE_ROOT = Path(os.environ["HF_HOME"]).parent


def _inside(path: str | os.PathLike) -> bool:
    return Path(path).resolve().is_relative_to(CACHE_ROOT.resolve())


def test_caches_point_into_the_sessions_empty_folder() -> None:
    import huggingface_hub.constants
    import torch.hub

    assert CACHE_ROOT.name.startswith("uvit-tests-cache-"), CACHE_ROOT

    for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "UVIT_DOWNLOAD_CACHE"):
        assert _inside(os.environ[name]), (name, os.environ[name])
    # Read at import by huggingface_hub: set before anything imported it.
    assert _inside(huggingface_hub.constants.HF_HUB_CACHE), huggingface_hub.constants.HF_HUB_CACHE
    assert _inside(torch.hub.get_dir()), torch.hub.get_dir()


def test_user_settings_are_not_seen() -> None:
    from uvit.inception import INCEPTION_WEIGHTS_ENV

    for name in (INCEPTION_WEIGHTS_ENV, "UVIT_STORE", "PREFECT_API_URL", "WANDB_PROJECT", "HF_HUB_CACHE"):
        assert name not in os.environ, name
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
