"""The CelebA files: `img_align_celeba.zip` (aligned 178x218 JPEGs) and `list_eval_partition.txt`.

The partition file has one line per image, `000001.jpg 0`, with partition 0 = train, 1 = val and
2 = test. Only the train and val partitions are published (the test partition is left out, as in
the official U-ViT and torchvision splits). The files live on the authors' Google Drive, which no
default URL can reach; the user downloads them and gives their folder or URLs.
"""

from __future__ import annotations

import re

__all__ = ["ARCHIVE", "FOLDER", "PARTITION", "PARTITIONS", "MISSING_MESSAGE", "parse_partition"]

ARCHIVE = "img_align_celeba.zip"
FOLDER = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
PARTITIONS = {"train": 0, "val": 1}  # 2 is the test partition, not published
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*\.jpe?g$", re.IGNORECASE)
MISSING_MESSAGE = (
    f"CelebA needs {ARCHIVE} (or its extracted {FOLDER}/ folder) and {PARTITION}: download both from the"
    " CelebA Google Drive (Img/ and Eval/; see http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html or the"
    " torchvision.datasets.CelebA docs, https://pytorch.org/vision/stable/generated/torchvision.datasets.CelebA.html)"
    " and give their folder with --source"
)


def parse_partition(text: str) -> tuple[dict[str, int], list[dict[str, object]]]:
    """File name -> partition (0, 1, 2), and the malformed lines (1-based line number, reason), skipped."""
    partition: dict[str, int] = {}
    malformed: list[dict[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            malformed.append({"line": number, "reason": f"expected '<file>.jpg <partition>', got {line[:80]!r}"})
        elif not _IMAGE_NAME.match(fields[0]):
            malformed.append({"line": number, "reason": f"not a plain .jpg file name: {fields[0][:80]!r}"})
        elif fields[1] not in ("0", "1", "2"):
            malformed.append({"line": number, "reason": f"partition {fields[1][:20]!r} is not 0, 1 or 2"})
        elif fields[0] in partition:
            malformed.append({"line": number, "reason": f"{fields[0]} listed again"})
        else:
            partition[fields[0]] = int(fields[1])
    return partition, malformed
