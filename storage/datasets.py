"""Dataset acquisition: sources on any fsspec URL, resumable transfers, safe extraction, one layout.

A download turns the official ImageNet / MS-COCO / CIFAR-10 / CelebA files (or a built-in set, written
into a temporary folder by the caller's `BuiltinGenerator` and then read like any local source) into
one `download` artifact:

    <store>/download/<key>/images/train/<wnid>/<file>       ImageNet layout: one folder per class
    <store>/download/<key>/images/val/<wnid>/<file>         (CIFAR-10: <class name>/<index>.png)
    <store>/download/<key>/images/{train,val}/<file>        COCO layout; CelebA (unlabelled)
    <store>/download/<key>/captions/captions_{train,val}.json   COCO captions JSON, bytes as published
    <store>/download/<key>/_progress/<unit>.json            finished units (a class, a split): resume
    <store>/download/<key>/_MANIFEST.json                   counts, classes, sources, skipped members

Sources are one or more URLs (local path, `file://`, `http(s)://`, `s3://`, `hf://datasets/...`),
each a folder holding the official files or one of those files itself. Archives on remote URLs are
copied to a local cache through `<name>.part` (continued with HTTP `Range` / a seek after an
interruption), then hashed and checked against `KNOWN_CHECKSUMS` (`storage.transfer`). Extraction
(`storage.layouts`, through `storage.archives`) never writes a member path: members are routed to
names built there, and absolute paths, `..`, links and device files are rejected and listed in the
manifest. Source folders are read the same way: a symlink, device, fifo or socket in a local folder
is a rejected member, never opened (`storage.archives.list_tree`), and a source file or folder
found through a link in a source folder is refused with an error naming it. The key
covers dataset, splits, each source's identity (the published checksum when known, else redacted
URL + size + etag/mtime) and `CODE_VERSION`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage import celeba, cifar10, imagenet_devkit, layouts, paths
from storage.archives import ArchiveError, DatasetError, check_no_link, list_tree
from storage.artifacts import ArtifactStore, ArtifactWriter, Manifest, artifact_key
from storage.caption_files import CAPTION_FILES
from storage.transfer import KNOWN_CHECKSUMS, ChecksumError, TransferError, default_cache_dir, fetch

__all__ = [
    "STAGE",
    "CODE_VERSION",
    "DATASETS",
    "KNOWN_CHECKSUMS",
    "DatasetError",
    "ArchiveError",
    "ChecksumError",
    "TransferError",
    "DatasetSpec",
    "SourceFile",
    "DownloadPlan",
    "DownloadResult",
    "BuiltinGenerator",
    "plan_download",
    "generate_builtin",
    "transfer_sources",
    "build_download",
    "download_dataset",
]

STAGE = "download"
CODE_VERSION = "1"
SPLITS = ("train", "val")


COCO_MISSING = (
    "MS-COCO {year}: download train{year}.zip and val{year}.zip from http://images.cocodataset.org/zips/ and "
    "annotations_trainval{year}.zip from http://images.cocodataset.org/annotations/, then pass their folder "
    "(or the extracted train{year}/, val{year}/, annotations/) as the source, e.g. --source /data/coco"
)
IMAGENET_MISSING = (
    "ImageNet (ILSVRC2012): download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (with "
    "LOC_val_solution.csv, or the devkit) from https://image-net.org after signing in, or give an extracted "
    "train/<wnid>/ tree, as the source, e.g. --source /data/imagenet"
)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset name: its source format (`imagenet`, `coco`, `cifar10`, `celeba`), COCO year, built in or not.

    `default_source` is used when no source is given; `missing` says where to get the files when
    there is no default.
    """

    name: str
    layout: str
    year: str = ""
    builtin: bool = False
    default_source: str = ""
    missing: str = ""
    splits: tuple[str, ...] = SPLITS  # the splits it has (a requested split it lacks is left out)


DATASETS: dict[str, DatasetSpec] = {
    "imagenet": DatasetSpec("imagenet", "imagenet", missing=IMAGENET_MISSING),
    "coco2014": DatasetSpec("coco2014", "coco", "2014", missing=COCO_MISSING.format(year="2014")),
    "coco2017": DatasetSpec("coco2017", "coco", "2017", missing=COCO_MISSING.format(year="2017")),
    "shapes": DatasetSpec("shapes", "imagenet", builtin=True),
    "shapes-coco": DatasetSpec("shapes-coco", "coco", "2014", builtin=True),
    "cifar10": DatasetSpec("cifar10", "cifar10", default_source=cifar10.URL),
    "celeba": DatasetSpec("celeba", "celeba", missing=celeba.MISSING_MESSAGE),
    # Any folder of class folders (<root>/<class>/*.jpg|png): one train split, classes sorted by name;
    # or a folder of images with captions.jsonl / captions.csv (storage.caption_files): train and val.
    "folder": DatasetSpec(
        "folder",
        "folder",
        missing="pass the folder of class folders (<root>/<class>/*.jpg), or of images with captions.jsonl "
        "or captions.csv, as the source",
    ),
}


@dataclass(frozen=True)
class SourceFile:
    """One resolved source: an archive, a small file or a folder tree, with its identity for the key."""

    role: str  # train / val / annotations / val_labels / synsets / captions_train / captions_val
    kind: str  # "archive", "file" or "tree"
    url: str
    identity: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        """The file or folder name."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DownloadPlan:
    """What a download reads and the artifact key it produces."""

    dataset: str
    splits: tuple[str, ...]
    key: str
    files: tuple[SourceFile, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's spec."""
        return DATASETS[self.dataset]

    def file(self, role: str) -> SourceFile | None:
        """The source for a role, or None."""
        return next((f for f in self.files if f.role == role), None)


@dataclass
class DownloadResult:
    """A published dataset artifact."""

    url: str
    key: str
    manifest: Manifest
    cached: bool


# ------------------------------------------------------------------------------------------------
# Resolving sources


_VERSION_FIELDS = ("ETag", "etag", "LastModified", "last_modified", "Last-Modified", "mtime", "created")


class _Locator:
    """Finds the official files and folders among the source URLs (folders, or the files themselves)."""

    def __init__(self, sources: Sequence[str], file_names: Iterable[str]) -> None:
        if not sources:
            raise DatasetError("no --source given")
        names = {n.rsplit("/", 1)[-1] for n in file_names}
        self.sources = [paths.normalize_url(s) for s in sources]
        self.files = {s.rsplit("/", 1)[-1]: s for s in self.sources if s.rsplit("/", 1)[-1] in names}
        self.folders = [s for s in self.sources if s not in self.files.values()]

    def describe(self) -> str:
        return ", ".join(paths.redact_url(s) for s in self.sources)

    def file(self, name: str) -> str | None:
        base = name.rsplit("/", 1)[-1]
        if base in self.files:
            return self.files[base]
        for folder in self.folders:
            url = paths.join(folder, name)
            fs, path = paths.filesystem(url)
            try:  # info (a HEAD over HTTP) rather than exists/isfile, which GET the whole body there
                if fs.info(path).get("type") == "file":
                    check_no_link(folder, name)
                    return url
            except FileNotFoundError:
                pass
        return None

    def folder(self, name: str) -> str | None:
        for folder in self.folders:
            url = paths.join(folder, name)
            fs, path = paths.filesystem(url)
            if fs.isdir(path):
                check_no_link(folder, name)
                return url
        return None


def _file_identity(url: str, checksums: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if name in checksums:  # the published checksum names the content wherever it is mirrored
        algo, expected = checksums[name]
        return {"name": name, algo: expected.lower()}
    fs, path = paths.filesystem(url)
    info = fs.info(path)
    lfs = info.get("lfs") or {}
    version = lfs.get("sha256") or next((str(info[k]) for k in _VERSION_FIELDS if info.get(k)), "")
    return {"url": paths.redact_url(url), "size": info.get("size"), "version": version}


def _tree_identity(url: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    entries = list_tree(url)
    for rel, info in entries.items():
        version = next((str(info[k]) for k in _VERSION_FIELDS if info.get(k)), "")
        digest.update(f"{rel}|{info.get('size')}|{version}\n".encode())
    return {"url": paths.redact_url(url), "files": len(entries), "listing_sha256": digest.hexdigest()}


def _resolve(spec: DatasetSpec, sources: Sequence[str], splits: Sequence[str],
             optional: Sequence[str] = ()) -> list[tuple[str, str, str]]:  # fmt: skip
    """(role, kind, url) of every source the dataset needs; a split in `optional` that the sources lack is
    left out (ImageNet and COCO layouts) rather than an error."""
    if spec.layout == "imagenet":
        names = [f"ILSVRC2012_img_{s}.tar" for s in SPLITS]
        extra = ["LOC_val_solution.csv", "LOC_synset_mapping.txt", "classes.txt"]
        locate = _Locator(sources, names + extra + [imagenet_devkit.ARCHIVE])
        found = []
        for split in splits:
            archive = locate.file(f"ILSVRC2012_img_{split}.tar")
            tree = None if archive else locate.folder(split)
            if archive is None and tree is None and split in optional:
                continue
            if archive is None and tree is None:
                raise DatasetError(
                    f"{spec.name}: found neither ILSVRC2012_img_{split}.tar nor a {split}/ folder in"
                    f" {locate.describe()}"
                )
            found.append((split, "archive", archive) if archive else (split, "tree", tree))
            if split == "val" and (archive or _has_loose_files(tree)):  # type: ignore[arg-type]
                labels = locate.file("LOC_val_solution.csv")
                devkit = locate.file(imagenet_devkit.ARCHIVE) or locate.folder(imagenet_devkit.FOLDER)
                if labels is not None:
                    found.append(("val_labels", "file", labels))
                elif devkit is not None:
                    found.append(("val_devkit", "archive" if devkit.endswith(".tar.gz") else "tree", devkit))
                else:
                    raise DatasetError(
                        f"{spec.name}: val images without class folders need LOC_val_solution.csv or the devkit"
                        f" ({imagenet_devkit.ARCHIVE} or its extracted {imagenet_devkit.FOLDER}/) in"
                        f" {locate.describe()}; or give a val/<wnid>/ tree"
                    )
        synsets = locate.file("LOC_synset_mapping.txt") or locate.file("classes.txt")
        if synsets:
            found.append(("synsets", "file", synsets))
        return found
    if spec.layout == "folder":
        return _resolve_folder(spec, sources)
    if spec.layout == "cifar10":
        return _resolve_cifar10(spec, sources, splits)
    if spec.layout == "celeba":
        return _resolve_celeba(spec, sources)
    year = spec.year
    annotations = f"annotations_trainval{year}.zip"
    captions = [f"annotations/captions_{s}{year}.json" for s in SPLITS]
    locate = _Locator(sources, [f"{s}{year}.zip" for s in SPLITS] + [annotations] + captions)
    found = []
    for split in splits:
        archive = locate.file(f"{split}{year}.zip")
        tree = None if archive else locate.folder(f"{split}{year}")
        if archive is None and tree is None and split in optional:
            continue
        if archive is None and tree is None:
            raise DatasetError(
                f"{spec.name}: found neither {split}{year}.zip nor a {split}{year}/ folder in {locate.describe()}"
            )
        found.append((split, "archive", archive) if archive else (split, "tree", tree))
    zipped = locate.file(annotations)
    if zipped:
        found.append(("annotations", "archive", zipped))
    else:
        for split in [role for role, _, _ in found if role in SPLITS]:  # the splits present
            captions = locate.file(f"annotations/captions_{split}{year}.json")
            if captions is None:
                raise DatasetError(
                    f"{spec.name}: found neither {annotations} nor annotations/captions_{split}{year}.json"
                    f" in {locate.describe()}"
                )
            found.append((f"captions_{split}", "file", captions))
    return found


def _resolve_folder(spec: DatasetSpec, sources: Sequence[str]) -> list[tuple[str, str, str]]:
    """One folder: of class folders (the train split), or of images with a captions file (train and val)."""
    if len(sources) != 1:
        raise DatasetError(f"{spec.name}: give exactly one folder of class folders, got {len(sources)} sources")
    url = paths.normalize_url(sources[0])
    fs, path = paths.filesystem(url)
    if not fs.isdir(path):
        raise DatasetError(f"{spec.name}: {paths.redact_url(url)} is not a folder (<root>/<class>/*.jpg)")
    for name in CAPTION_FILES:
        if fs.isfile(f"{path.rstrip('/')}/{name}"):
            return [("images", "tree", url), ("captions", "file", paths.join(url, name))]
    return [("train", "tree", url)]


def _resolved_splits(spec: DatasetSpec, files: Sequence[tuple[str, str, str]], splits: tuple[str, ...]) -> tuple:
    """The requested splits a resolved source has: a folder of class folders has only train; ImageNet
    and COCO sources lack the optional splits they were not found with."""
    if spec.layout in ("imagenet", "coco"):
        return tuple(s for s in splits if any(role == s for role, _, _ in files))
    if spec.layout != "folder" or any(role == "captions" for role, _, _ in files):
        return splits
    if "train" not in splits:
        raise DatasetError(f"{spec.name}: a folder of class folders has only a train split")
    return ("train",)


def _resolve_cifar10(spec: DatasetSpec, sources: Sequence[str], splits: Sequence[str]) -> list[tuple[str, str, str]]:
    """The binary archive, or a folder of its `.bin` files; the pickle version is refused by name."""
    batches = [name for split in splits for name in cifar10.BATCHES[split]]
    locate = _Locator(sources, [cifar10.ARCHIVE, cifar10.PICKLE_ARCHIVE])
    archive = locate.file(cifar10.ARCHIVE)
    if archive:
        return [("archive", "archive", archive)]
    if (
        locate.file(cifar10.PICKLE_ARCHIVE)
        or locate.folder(cifar10.PICKLE_FOLDER)
        or any(s.rstrip("/").endswith(f"/{cifar10.PICKLE_FOLDER}") for s in locate.folders)
    ):
        raise DatasetError(f"{spec.name}: {cifar10.PICKLE_MESSAGE}")
    candidates = [*locate.folders, *filter(None, [locate.folder(cifar10.FOLDER)])]
    for folder in candidates:
        present = set(paths.list_names(folder))
        if batches[0] in present:
            missing = [b for b in batches if b not in present]
            if missing:
                raise DatasetError(f"{spec.name}: {paths.redact_url(folder)} lacks {', '.join(missing)}")
            return [("batches", "tree", folder)]
        if "data_batch_1" in present or "test_batch" in present:
            raise DatasetError(f"{spec.name}: {paths.redact_url(folder)}: {cifar10.PICKLE_MESSAGE}")
    raise DatasetError(
        f"{spec.name}: found neither {cifar10.ARCHIVE} nor a folder of its .bin files ({batches[0]}, ...) in"
        f" {locate.describe()}; the official file is {cifar10.URL} (md5 {cifar10.MD5})"
    )


def _resolve_celeba(spec: DatasetSpec, sources: Sequence[str]) -> list[tuple[str, str, str]]:
    """`img_align_celeba.zip` (or the extracted folder) and `list_eval_partition.txt`."""
    locate = _Locator(sources, [celeba.ARCHIVE, celeba.PARTITION])
    archive = locate.file(celeba.ARCHIVE)
    tree = None
    if archive is None:
        tree = locate.folder(celeba.FOLDER) or next(
            (s for s in locate.folders if s.rstrip("/").endswith(f"/{celeba.FOLDER}")), None
        )
    partition = locate.file(celeba.PARTITION)
    if (archive is None and tree is None) or partition is None:
        lacking = "the images" if partition else celeba.PARTITION
        raise DatasetError(f"{spec.name}: found no {lacking} in {locate.describe()}. {celeba.MISSING_MESSAGE}")
    images = ("images", "archive", archive) if archive else ("images", "tree", tree)
    return [images, ("partition", "file", partition)]


def _has_loose_files(tree_url: str) -> bool:
    fs, path = paths.filesystem(tree_url)
    return any(e["type"] != "directory" for e in fs.ls(path, detail=True))


# ------------------------------------------------------------------------------------------------
# Planning, transfer, build


def _check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    splits = tuple(splits)
    if not splits or not set(splits) <= set(SPLITS) or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
    return tuple(s for s in SPLITS if s in splits)


@dataclass(frozen=True)
class BuiltinGenerator:
    """How the built-in datasets are made: a version of the generating code (part of their key) and
    `write(layout, folder, options)`, which writes the dataset's files in the official `layout`."""

    version: str
    write: Callable[[str, str | os.PathLike, Mapping[str, int]], None]


def _builtin(spec: DatasetSpec, builtin: BuiltinGenerator | None) -> BuiltinGenerator:
    if builtin is None:
        raise ValueError(f"{spec.name} is a built-in dataset: pass its generator (stages.download builds it)")
    return builtin


def plan_download(
    dataset: str,
    source: str | Sequence[str] | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    shapes: Mapping[str, int] | None = None,
    checksums: Mapping[str, tuple[str, str]] | None = None,
    builtin: BuiltinGenerator | None = None,
    optional_splits: Sequence[str] = (),
) -> DownloadPlan:
    """Resolve the sources and compute the artifact key (built-in datasets: from `shapes` options and
    the generator's version only). Of `splits`, those in `optional_splits` are left out when a
    source does not have them (e.g. a train-only ImageNet tree for class-conditional training);
    the key then names only the splits downloaded.

    `shapes` holds `n_train_per_class`, `n_val`, `seed` (built-in ImageNet layout) or `n_train`,
    `n_val`, `seed` (built-in COCO layout).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    splits = tuple(s for s in _check_splits(splits) if s in spec.splits)
    if not splits:
        raise ValueError(f"{dataset} has only the splits {', '.join(spec.splits)}")
    checksums = KNOWN_CHECKSUMS if checksums is None else checksums
    if spec.builtin:
        if source:
            raise ValueError(f"{dataset} is generated (a built-in dataset); it takes no source")
        options = _shapes_options(spec, shapes)
        config = {
            "dataset": dataset,
            "splits": list(splits),
            "generator": options,
            "shapes": _builtin(spec, builtin).version,
        }
        return DownloadPlan(dataset, splits, artifact_key(STAGE, config, code_version=CODE_VERSION), (), config)
    if shapes:
        raise ValueError(f"shapes options apply to the built-in datasets, not {dataset}")
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source or [])
    sources = [s for s in sources if os.fspath(s)]  # an unset deployment variable arrives as ""
    if not sources:
        if not spec.default_source:
            raise DatasetError(f"{dataset}: no source given. {spec.missing}".rstrip(". "))
        sources = [spec.default_source]
    resolved = _resolve(spec, [os.fspath(s) for s in sources], splits, tuple(optional_splits))
    splits = _resolved_splits(spec, resolved, splits)
    files = tuple(
        SourceFile(role, kind, url, _tree_identity(url) if kind == "tree" else _file_identity(url, checksums))
        for role, kind, url in resolved
    )
    config = {
        "dataset": dataset,
        "splits": list(splits),
        "sources": {f.role: {"kind": f.kind, **f.identity} for f in files},
    }
    return DownloadPlan(dataset, splits, artifact_key(STAGE, config, code_version=CODE_VERSION), files, config)


def _shapes_options(spec: DatasetSpec, options: Mapping[str, int] | None) -> dict[str, int]:
    if spec.layout == "imagenet":
        defaults = {"n_train_per_class": 64, "n_val": 64, "seed": 0}
    else:
        defaults = {"n_train": 256, "n_val": 64, "seed": 0}
    unknown = set(options or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {spec.name} options {sorted(unknown)}; valid: {sorted(defaults)}")
    return {**defaults, **{k: int(v) for k, v in (options or {}).items()}}


def generate_builtin(plan: DownloadPlan, folder: str | os.PathLike, builtin: BuiltinGenerator) -> DownloadPlan:
    """Write a built-in dataset into a local folder and resolve it as a source tree (the key is kept)."""
    spec = plan.spec
    if not spec.builtin:
        raise ValueError(f"{plan.dataset} is not a built-in dataset")
    _builtin(spec, builtin).write(spec.layout, folder, plan.config["generator"])
    files = tuple(SourceFile(role, kind, url) for role, kind, url in _resolve(spec, [os.fspath(folder)], plan.splits))
    return dataclasses.replace(plan, files=files)


def transfer_sources(plan: DownloadPlan, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Local copies of the plan's remote archives (local ones are read in place): role -> local path."""
    local = {}
    for source in plan.files:
        if source.kind != "archive":
            continue
        local[source.role] = transfer(source, cache_dir)
    return local


def transfer(source: SourceFile, cache_dir: str | os.PathLike | None = None) -> str:
    """A local path for one archive: the file itself if local, else a resumable copy in the cache."""
    if paths.is_local(source.url):
        return paths.normalize_url(source.url)
    ident = hashlib.sha256(json.dumps(source.identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    dest = Path(cache_dir or default_cache_dir()) / ident / source.name
    return str(fetch(source.url, dest))


def build_download(
    plan: DownloadPlan,
    store_root: str,
    local_files: Mapping[str, str] | None = None,
    *,
    checksums: Mapping[str, tuple[str, str]] | None = None,
    wait_s: float | None = None,
) -> Manifest:
    """Verify, extract and publish the dataset artifact (resuming finished units); the manifest."""
    store = ArtifactStore(store_root)
    if not plan.files:
        raise DatasetError(f"{plan.dataset}: the plan has no sources (generate_builtin first?)")
    local = {}
    for f in plan.files:
        if f.kind == "archive":
            path = (local_files or {}).get(f.role) or (paths.normalize_url(f.url) if paths.is_local(f.url) else None)
            if path is None:
                raise DatasetError(f"{plan.dataset}: remote archive {f.name} was not transferred (transfer_sources)")
            local[f.role] = path

    def build(writer: ArtifactWriter) -> Manifest:
        return layouts.build(plan, writer, local, KNOWN_CHECKSUMS if checksums is None else checksums, CODE_VERSION)

    return store.ensure(STAGE, plan.key, build, wait_s=wait_s)


def download_dataset(
    dataset: str,
    source: str | Sequence[str] | None,
    store_root: str,
    *,
    splits: Sequence[str] = SPLITS,
    cache_dir: str | os.PathLike | None = None,
    shapes: Mapping[str, int] | None = None,
    checksums: Mapping[str, tuple[str, str]] | None = None,
    builtin: BuiltinGenerator | None = None,
    optional_splits: Sequence[str] = (),
) -> DownloadResult:
    """Plan, transfer, verify, extract and publish a dataset without Prefect (a cache hit does nothing).

    Built-in datasets need `builtin`, the generator that writes them (`stages.download.BUILTIN`);
    `optional_splits` see `plan_download`."""
    plan = plan_download(dataset, source, splits=splits, shapes=shapes, checksums=checksums, builtin=builtin,
                         optional_splits=optional_splits)  # fmt: skip
    store = ArtifactStore(store_root)
    # A cache hit checks the files' sizes; a damaged download is rebuilt (resuming what is intact).
    if store.exists(STAGE, plan.key) and not store.check(STAGE, plan.key, hashes=False):
        return DownloadResult(store.url_for(STAGE, plan.key), plan.key, store.manifest(STAGE, plan.key), True)
    with contextlib.ExitStack() as stack:
        if plan.spec.builtin:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"uvit-{dataset}-"))
            plan = generate_builtin(plan, folder, builtin)
        local = transfer_sources(plan, cache_dir)
        manifest = build_download(plan, store_root, local, checksums=checksums)
    return DownloadResult(store.url_for(STAGE, plan.key), plan.key, manifest, False)
