"""Built-in offline datasets: seeded coloured shapes in the ImageNet and MS-COCO folder layouts.

Each image shows one shape (circle, square, triangle or cross) of a named colour on a plain
background, drawn inside the image's central square so that an ADM-style center crop keeps it.
Image sizes vary (non-square), so preprocessing is exercised as on the real data. Every image is a
pure function of `(seed, split, index)`: the same seed gives byte-identical files, and a larger
dataset starts with the images of a smaller one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CLASSES",
    "WNIDS",
    "ShapeSpec",
    "sample_shape",
    "render_shape",
    "shape_captions",
    "jpeg_bytes",
    "shapes_arrays",
    "make_imagenet_like",
    "make_coco_like",
    "read_classes",
    "imagenet_train_items",
    "imagenet_val_items",
    "coco_items",
]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# ImageNet-style synset ids, one folder per class; class index = position in sorted order.
WNIDS: tuple[str, ...] = tuple(f"n{i + 1:08d}" for i in range(len(SHAPE_CLASSES)))

# Named colours keep captions truthful: a shape's RGB is its name's RGB plus a small jitter.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 215),
    "yellow": (235, 210, 45),
    "orange": (240, 135, 30),
    "purple": (135, 60, 175),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "light gray": (200, 200, 200),
    "dark gray": (60, 60, 60),
    "beige": (225, 212, 180),
    "navy": (30, 35, 85),
    "pale green": (190, 225, 190),
}
_MIN_CONTRAST = 120.0  # Euclidean RGB distance between shape and background names
_JITTER = 12  # per-channel colour jitter
_SUPERSAMPLE = 4  # draw at 4x and box-filter down for antialiased edges
_JPEG_QUALITY = 95
_SPLIT_CODES = {"train": 0, "val": 1}
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


@dataclass(frozen=True)
class ShapeSpec:
    """Everything needed to draw one image and describe it."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    background: str
    background_rgb: tuple[int, int, int]
    width: int
    height: int
    cx: float  # shape centre in image pixels
    cy: float
    radius: float  # half the shape's extent in image pixels
    size_word: str  # "small" or "large"
    position: str  # e.g. "in the top left corner", "in the center"

    @property
    def label(self) -> int:
        """Class index (position in `SHAPE_CLASSES`, equal to the sorted-wnid order)."""
        return SHAPE_CLASSES.index(self.shape)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(xmin, ymin, xmax, ymax) in image pixels, clipped to the image."""
        r = self.radius
        return (
            max(0, int(np.floor(self.cx - r))),
            max(0, int(np.floor(self.cy - r))),
            min(self.width - 1, int(np.ceil(self.cx + r))),
            min(self.height - 1, int(np.ceil(self.cy + r))),
        )


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def _position_phrase(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "in the center"
    if row == 1:
        return f"on the {_COLS[col]}"
    if col == 1:
        return f"at the {_ROWS[row]}"
    return f"in the {_ROWS[row]} {_COLS[col]} corner"


def sample_shape(
    rng: np.random.Generator, shape: str | None = None, min_side: int = 40, max_side: int = 72
) -> ShapeSpec:
    """Draw a random shape description (class, colours, image size, placement) from `rng`."""
    if shape is None:
        shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
    elif shape not in SHAPE_CLASSES:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPE_CLASSES)}")
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))

    colour_names = list(SHAPE_COLOURS)
    background_names = list(BACKGROUND_COLOURS)
    while True:
        colour = colour_names[int(rng.integers(len(colour_names)))]
        background = background_names[int(rng.integers(len(background_names)))]
        distance = np.linalg.norm(np.subtract(SHAPE_COLOURS[colour], BACKGROUND_COLOURS[background]))
        if distance >= _MIN_CONTRAST:
            break
    jitter = rng.integers(-_JITTER, _JITTER + 1, size=6)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(SHAPE_COLOURS[colour], jitter[:3]))
    background_rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(BACKGROUND_COLOURS[background], jitter[3:]))

    # Place the shape inside the central square (what a center crop keeps), described in thirds.
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    radius_frac = float(rng.uniform(0.14, 0.30))
    radius = radius_frac * side
    margin = radius + 0.04 * side
    u, v = (float(t) for t in rng.uniform(margin, side - margin, size=2))
    row, col = min(int(3 * v / side), 2), min(int(3 * u / side), 2)
    return ShapeSpec(
        shape=shape,
        colour=colour,
        rgb=rgb,  # type: ignore[arg-type]
        background=background,
        background_rgb=background_rgb,  # type: ignore[arg-type]
        width=width,
        height=height,
        cx=x0 + u,
        cy=y0 + v,
        radius=radius,
        size_word="small" if radius_frac < 0.22 else "large",
        position=_position_phrase(row, col),
    )


def render_shape(spec: ShapeSpec) -> Image.Image:
    """Draw `spec` as an RGB PIL image of size (spec.width, spec.height)."""
    s = _SUPERSAMPLE
    image = Image.new("RGB", (spec.width * s, spec.height * s), spec.background_rgb)
    draw = ImageDraw.Draw(image)
    cx, cy, r = spec.cx * s, spec.cy * s, spec.radius * s
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=spec.rgb)
    elif spec.shape == "square":
        h = r * 0.85  # a square of the same visual weight as the circle
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=spec.rgb)
    elif spec.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=spec.rgb)
    elif spec.shape == "cross":
        t = r * 0.3
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=spec.rgb)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=spec.rgb)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")
    return image.resize((spec.width, spec.height), resample=Image.BOX)


_CAPTION_TEMPLATES = (
    "A {colour} {shape} {position} on a {background} background.",
    "A {size} {colour} {shape} {position}.",
    "There is a {colour} {shape} {position} of the picture.",
    "A {shape} painted {colour} against a plain {background} backdrop.",
    "{size_cap} {colour} {shape} {position}, {background} background.",
    "An image of a {colour} {shape}.",
    "A simple drawing of a {size} {shape} in {colour}.",
    "The {background} image shows a {colour} {shape} {position}.",
)


def shape_captions(spec: ShapeSpec, rng: np.random.Generator, n: int = 5) -> list[str]:
    """`n` distinct COCO-style captions naming the colour, shape, size, position and background."""
    if not 1 <= n <= len(_CAPTION_TEMPLATES):
        raise ValueError(f"n must be in 1..{len(_CAPTION_TEMPLATES)}, got {n}")
    position = spec.position
    fields = dict(
        colour=spec.colour,
        shape=spec.shape,
        position=position,
        background=spec.background,
        size=spec.size_word,
        size_cap=spec.size_word.capitalize(),
    )
    chosen = rng.choice(len(_CAPTION_TEMPLATES), size=n, replace=False)
    captions = []
    for i in sorted(int(c) for c in chosen):
        text = _CAPTION_TEMPLATES[i].format(**fields)
        captions.append(text[0].upper() + text[1:])
    return captions


def jpeg_bytes(image: Image.Image) -> bytes:
    """Encode as JPEG with fixed settings (deterministic bytes for a given Pillow build)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def shapes_arrays(n: int, image_size: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """`n` shapes as the pipeline sees them (JPEG, then center crop): uint8 (n, S, S, 3), labels (n,)."""
    from uvit.encoders import center_crop_arr

    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    for i in range(n):
        spec = sample_shape(_rng(seed, split, i))
        with Image.open(io.BytesIO(jpeg_bytes(render_shape(spec)))) as decoded:
            images[i] = center_crop_arr(decoded.convert("RGB"), image_size)
        labels[i] = spec.label
    return images, labels


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_classes(root: Path) -> None:
    lines = "".join(f"{wnid} {name}\n" for wnid, name in zip(WNIDS, SHAPE_CLASSES))
    _write(root / "classes.txt", lines.encode())


def make_imagenet_like(root: str | Path, n_train_per_class: int, n_val: int, seed: int = 0) -> Path:
    """Write shapes in the ILSVRC layout: train/<wnid>/<wnid>_<i>.JPEG, val/, LOC_val_solution.csv."""
    if n_train_per_class < 0 or n_val < 0:
        raise ValueError(f"counts must be >= 0, got {n_train_per_class}, {n_val}")
    root = Path(root)
    _write_classes(root)
    for class_index, (wnid, shape) in enumerate(zip(WNIDS, SHAPE_CLASSES)):
        for i in range(n_train_per_class):
            spec = sample_shape(_rng(seed, "train", class_index * 1_000_000 + i), shape=shape)
            _write(root / "train" / wnid / f"{wnid}_{i + 1}.JPEG", jpeg_bytes(render_shape(spec)))
    rows = ["ImageId,PredictionString"]
    for i in range(n_val):
        spec = sample_shape(_rng(seed, "val", i))
        image_id = f"ILSVRC2012_val_{i + 1:08d}"
        _write(root / "val" / f"{image_id}.JPEG", jpeg_bytes(render_shape(spec)))
        xmin, ymin, xmax, ymax = spec.bbox
        rows.append(f"{image_id},{WNIDS[spec.label]} {xmin} {ymin} {xmax} {ymax} ")
    _write(root / "LOC_val_solution.csv", ("\n".join(rows) + "\n").encode())
    return root


def _coco_split(root: Path, split: str, n: int, seed: int) -> None:
    year_split = f"{split}2014"
    images, annotations = [], []
    annotation_id = 1 if split == "train" else 10_000_001
    for i in range(n):
        rng = _rng(seed, split, i)
        spec = sample_shape(rng)
        image_id = i + 1
        file_name = f"COCO_{year_split}_{image_id:012d}.jpg"
        _write(root / year_split / file_name, jpeg_bytes(render_shape(spec)))
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "coco_url": "",
                "height": spec.height,
                "width": spec.width,
                "date_captured": "2014-01-01 00:00:00",
                "flickr_url": "",
                "id": image_id,
            }
        )
        n_captions = 6 if rng.random() < 0.1 else 5  # COCO has 5 to 7 captions per image
        for caption in shape_captions(spec, rng, n_captions):
            annotations.append({"image_id": image_id, "id": annotation_id, "caption": caption})
            annotation_id += 1
    document = {
        "info": {
            "description": "uvit built-in shapes in the MS-COCO 2014 captions layout",
            "url": "",
            "version": "1.0",
            "year": 2014,
            "contributor": "uvit.shapes",
            "date_created": "2014-01-01 00:00:00",
        },
        "licenses": [{"url": "", "id": 1, "name": "CC0 1.0"}],
        "images": images,
        "annotations": annotations,
    }
    payload = json.dumps(document, indent=None, separators=(",", ":")).encode()
    _write(root / "annotations" / f"captions_{year_split}.json", payload)


def make_coco_like(root: str | Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write shapes in the MS-COCO 2014 layout: train2014/, val2014/, annotations/captions_*.json."""
    if n_train < 0 or n_val < 0:
        raise ValueError(f"counts must be >= 0, got {n_train}, {n_val}")
    root = Path(root)
    _coco_split(root, "train", n_train, seed)
    _coco_split(root, "val", n_val, seed)
    return root


# ---------------------------------------------------------------------------------------------
# Readers for the two layouts (they also read the real ImageNet / COCO folders).


def read_classes(root: str | Path) -> list[tuple[str, str]]:
    """(wnid, name) pairs from classes.txt (or LOC_synset_mapping.txt), in sorted-wnid order."""
    root = Path(root)
    for name in ("classes.txt", "LOC_synset_mapping.txt"):
        if (root / name).exists():
            pairs = []
            for line in (root / name).read_text().splitlines():
                if line.strip():
                    wnid, _, label = line.strip().partition(" ")
                    pairs.append((wnid, label))
            return sorted(pairs)
    raise FileNotFoundError(f"no classes.txt or LOC_synset_mapping.txt under {root}")


def imagenet_train_items(root: str | Path) -> Iterator[tuple[Path, int]]:
    """(path, class index) of every train image, classes in sorted-wnid order (as ImageFolder)."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"no train/ folder under {root}")
    wnids = sorted(p.name for p in train.iterdir() if p.is_dir())
    for index, wnid in enumerate(wnids):
        for path in sorted((train / wnid).iterdir()):
            if path.suffix.lower() in (".jpeg", ".jpg", ".png"):
                yield path, index


def imagenet_val_items(root: str | Path) -> Iterator[tuple[Path, int]]:
    """(path, class index) of every val image listed in LOC_val_solution.csv."""
    root = Path(root)
    index_of = {wnid: i for i, (wnid, _) in enumerate(read_classes(root))}
    lines = (root / "LOC_val_solution.csv").read_text().splitlines()
    for line in sorted(lines[1:]):
        if line.strip():
            image_id, prediction = line.split(",", 1)
            yield root / "val" / f"{image_id}.JPEG", index_of[prediction.split()[0]]


def coco_items(root: str | Path, split: str = "train") -> Iterator[tuple[Path, list[str]]]:
    """(path, captions) per image of a COCO 2014 split, in increasing image id (as the official code)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    document = json.loads((root / "annotations" / f"captions_{split}2014.json").read_text())
    captions: dict[int, list[str]] = {image["id"]: [] for image in document["images"]}
    for annotation in document["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"])
    files = {image["id"]: image["file_name"] for image in document["images"]}
    for image_id in sorted(files):
        yield root / f"{split}2014" / files[image_id], captions[image_id]
