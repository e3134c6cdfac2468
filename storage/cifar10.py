"""The CIFAR-10 binary format: batch files of 3073-byte records, parsed with numpy (never unpickled).

`cifar-10-binary.tar.gz` holds `cifar-10-batches-bin/` with `data_batch_1.bin` .. `data_batch_5.bin`
(train, 10,000 records each), `test_batch.bin` (published here as split `val`) and
`batches.meta.txt` (the 10 class names in label order). A record is 1 label byte followed by
3072 pixel bytes: the 1024 red, then green, then blue values of a row-major 32x32 image. The
python version (`cifar-10-python.tar.gz`) stores the same data as pickles, and unpickling a
downloaded file can run code: it is refused with a pointer to the binary version.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "ARCHIVE",
    "URL",
    "MD5",
    "FOLDER",
    "PICKLE_ARCHIVE",
    "PICKLE_FOLDER",
    "META",
    "CLASS_NAMES",
    "RECORD_BYTES",
    "BATCHES",
    "PICKLE_MESSAGE",
    "is_pickle_member",
    "class_names",
    "parse_batch",
    "record_count",
    "iter_batches",
]

ARCHIVE = "cifar-10-binary.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
FOLDER = "cifar-10-batches-bin"
PICKLE_ARCHIVE = "cifar-10-python.tar.gz"
PICKLE_FOLDER = "cifar-10-batches-py"
META = "batches.meta.txt"
SIDE = 32
RECORD_BYTES = 1 + 3 * SIDE * SIDE
N_CLASSES = 10
# The names batches.meta.txt lists, for an extracted folder that lacks it.
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCHES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "val": ("test_batch.bin",),
}
PICKLE_MESSAGE = (
    f"{PICKLE_ARCHIVE} / {PICKLE_FOLDER}/ is the python version of CIFAR-10, stored as pickles; unpickling"
    f" a downloaded file can run code, so it is not read. Use the binary version {ARCHIVE} ({URL}, md5 {MD5})"
    f" or a folder of its .bin files"
)


def is_pickle_member(name: str) -> bool:
    """Whether an archive member or file name belongs to the python (pickle) version."""
    parts = name.replace("\\", "/").strip("/").split("/")
    base = parts[-1]
    pickled_batch = base in ("batches.meta", "test_batch") or (
        base.startswith("data_batch_") and base.removeprefix("data_batch_").isdigit()
    )
    return PICKLE_FOLDER in parts or pickled_batch


def class_names(meta_text: str | None) -> tuple[str, ...]:
    """The class names in label order: the lines of `batches.meta.txt`, or the official list without one."""
    if meta_text is None:
        return CLASS_NAMES
    names = tuple(line.strip() for line in meta_text.splitlines() if line.strip())
    if len(names) != N_CLASSES or len(set(names)) != N_CLASSES:
        raise ValueError(f"{META}: expected {N_CLASSES} distinct class names, got {list(names)[:20]}")
    return names


def parse_batch(data: bytes) -> tuple[list[tuple[int, int, np.ndarray]], list[tuple[int, str]]]:
    """Records of a batch file as (record index, label, uint8 (32, 32, 3) image); and (index, reason) skipped.

    A record whose label byte is not a class (> 9) and a truncated final record are skipped.
    """
    n = len(data) // RECORD_BYTES
    tail = len(data) - n * RECORD_BYTES
    records = np.frombuffer(data, dtype=np.uint8, count=n * RECORD_BYTES).reshape(n, RECORD_BYTES)
    labels = records[:, 0]
    images = records[:, 1:].reshape(n, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    good: list[tuple[int, int, np.ndarray]] = []
    skipped: list[tuple[int, str]] = []
    for i in range(n):
        label = int(labels[i])
        if label >= N_CLASSES:
            skipped.append((i, f"label byte {label} is not a class (0-9)"))
        else:
            good.append((i, label, np.ascontiguousarray(images[i])))
    if tail:
        skipped.append((n, f"truncated record ({tail} of {RECORD_BYTES} bytes)"))
    return good, skipped


def record_count(size: int) -> int:
    """Whole records in a batch file of `size` bytes (the index offset of the next batch)."""
    return size // RECORD_BYTES


def iter_batches(splits: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(split, batch file name) in publishing order."""
    for split in splits:
        for name in BATCHES[split]:
            yield split, name
