"""ImageNet validation labels from the official devkit (`ILSVRC2012_devkit_t12.tar.gz`).

The devkit's `data/ILSVRC2012_validation_ground_truth.txt` holds one ILSVRC2012_ID (1..1000) per
line, line i for `ILSVRC2012_val_<i, 8 digits>`; `data/meta.mat` (MATLAB v5, read with scipy, as
torchvision does) maps each ILSVRC2012_ID to its WNID. Either the archive or its extracted folder
(`ILSVRC2012_devkit_t12/`) is accepted.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

from storage import paths
from storage.archives import DatasetError

__all__ = ["ARCHIVE", "FOLDER", "GROUND_TRUTH", "META", "val_labels", "parse_val_labels"]

ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
FOLDER = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"


def parse_val_labels(meta_mat: bytes, ground_truth: str) -> dict[str, str]:
    """{"ILSVRC2012_val_00000001": wnid, ...} from the bytes of meta.mat and the ground-truth text."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
        wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise DatasetError(f"{META}: not the devkit's synsets table ({e})") from None
    labels = {}
    for i, line in enumerate(ground_truth.split(), start=1):
        if not line.isdigit() or int(line) not in wnid_of:
            raise DatasetError(f"{GROUND_TRUTH}: line {i} is {line!r}, not an ILSVRC2012_ID of meta.mat")
        labels[f"ILSVRC2012_val_{i:08d}"] = wnid_of[int(line)]
    if not labels:
        raise DatasetError(f"{GROUND_TRUTH} is empty")
    return labels


def val_labels(kind: str, location: str) -> dict[str, str]:
    """The val labels of a devkit: `kind` "archive" (a local .tar.gz path) or "tree" (its extracted folder URL)."""
    files: dict[str, Any] = {}
    if kind == "archive":
        try:
            with tarfile.open(location, "r:gz") as tar:
                for member in tar.getmembers():
                    rel = member.name.split("/", 1)[-1] if "/" in member.name else member.name
                    if rel in (GROUND_TRUTH, META) and member.isfile():
                        files[rel] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"{ARCHIVE}: not a readable tar.gz ({e})") from None
    else:
        for rel in (GROUND_TRUTH, META):
            fs, path = paths.filesystem(paths.join(location, rel))
            if fs.isfile(path):
                files[rel] = fs.cat_file(path)
    missing = [rel for rel in (GROUND_TRUTH, META) if rel not in files]
    if missing:
        raise DatasetError(f"the ImageNet devkit at {paths.redact_url(location)} lacks {', '.join(missing)}")
    return parse_val_labels(files[META], files[GROUND_TRUTH].decode("ascii", errors="replace"))
