"""Dataset acquisition: sources on any fsspec URL, resumable transfers, safe extraction, one layout.

A download turns the official ImageNet / MS-COCO / CIFAR-10 / CelebA files (or a built-in shapes
set from `uvit.shapes`, generated into a temporary folder and then read like any local source) into
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
(`storage.archives`) never writes a member path: members are routed to names built here, and
absolute paths, `..`, links and device files are rejected and listed in the manifest. The key
covers dataset, splits, each source's identity (the published checksum when known, else redacted
URL + size + etag/mtime) and `CODE_VERSION`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage import celeba, cifar10, paths
from storage.archives import (
    ArchiveError,
    DatasetError,
    Member,
    Sink,
    copy_members,
    iter_tar,
    iter_zip,
    list_tree,
    tree_member,
)
from storage.artifacts import ArtifactStore, ArtifactWriter, Manifest, artifact_key
from storage.images import png_bytes
from storage.transfer import KNOWN_CHECKSUMS, ChecksumError, TransferError, default_cache_dir, fetch, verify_file

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
    "plan_download",
    "generate_builtin",
    "transfer_sources",
    "build_download",
    "download_dataset",
]

STAGE = "download"
CODE_VERSION = "1"
MAX_LISTED = 1000  # skipped/rejected members listed in the manifest (all are counted)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


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


DATASETS: dict[str, DatasetSpec] = {
    "imagenet": DatasetSpec("imagenet", "imagenet"),
    "coco2014": DatasetSpec("coco2014", "coco", "2014"),
    "coco2017": DatasetSpec("coco2017", "coco", "2017"),
    "shapes": DatasetSpec("shapes", "imagenet", builtin=True),
    "shapes-coco": DatasetSpec("shapes-coco", "coco", "2014", builtin=True),
    "cifar10": DatasetSpec("cifar10", "cifar10", default_source=cifar10.URL),
    "celeba": DatasetSpec("celeba", "celeba", missing=celeba.MISSING_MESSAGE),
}
# What the artifact holds for each source format: class folders (read with the manifest's classes),
# COCO images and captions, or unlabelled images.
_PUBLISHED_LAYOUT = {"imagenet": "imagenet", "coco": "coco", "cifar10": "imagenet", "celeba": "unlabelled"}


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
                    return url
            except FileNotFoundError:
                pass
        return None

    def folder(self, name: str) -> str | None:
        for folder in self.folders:
            url = paths.join(folder, name)
            fs, path = paths.filesystem(url)
            if fs.isdir(path):
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


def _resolve(spec: DatasetSpec, sources: Sequence[str], splits: Sequence[str]) -> list[tuple[str, str, str]]:
    """(role, kind, url) of every source the dataset needs."""
    if spec.layout == "imagenet":
        names = [f"ILSVRC2012_img_{s}.tar" for s in SPLITS]
        extra = ["LOC_val_solution.csv", "LOC_synset_mapping.txt", "classes.txt"]
        locate = _Locator(sources, names + extra + ["ILSVRC2012_validation_ground_truth.txt"])
        found = []
        for split in splits:
            archive = locate.file(f"ILSVRC2012_img_{split}.tar")
            tree = None if archive else locate.folder(split)
            if archive is None and tree is None:
                raise DatasetError(
                    f"{spec.name}: found neither ILSVRC2012_img_{split}.tar nor a {split}/ folder in"
                    f" {locate.describe()}"
                )
            found.append((split, "archive", archive) if archive else (split, "tree", tree))
            if split == "val" and (archive or _has_loose_files(tree)):  # type: ignore[arg-type]
                labels = locate.file("LOC_val_solution.csv")
                if labels is None:
                    hint = (
                        " (ILSVRC2012_validation_ground_truth.txt needs the devkit's meta.mat order and is"
                        " not supported)"
                        if locate.file("ILSVRC2012_validation_ground_truth.txt")
                        else ""
                    )
                    raise DatasetError(
                        f"{spec.name}: val images without class folders need LOC_val_solution.csv in"
                        f" {locate.describe()}{hint}; or give a val/<wnid>/ tree"
                    )
                found.append(("val_labels", "file", labels))
        synsets = locate.file("LOC_synset_mapping.txt") or locate.file("classes.txt")
        if synsets:
            found.append(("synsets", "file", synsets))
        return found
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
        if archive is None and tree is None:
            raise DatasetError(
                f"{spec.name}: found neither {split}{year}.zip nor a {split}{year}/ folder in {locate.describe()}"
            )
        found.append((split, "archive", archive) if archive else (split, "tree", tree))
    zipped = locate.file(annotations)
    if zipped:
        found.append(("annotations", "archive", zipped))
    else:
        for split in splits:
            captions = locate.file(f"annotations/captions_{split}{year}.json")
            if captions is None:
                raise DatasetError(
                    f"{spec.name}: found neither {annotations} nor annotations/captions_{split}{year}.json"
                    f" in {locate.describe()}"
                )
            found.append((f"captions_{split}", "file", captions))
    return found


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


def _shapes_version() -> str:
    import uvit.shapes

    return hashlib.sha256(Path(uvit.shapes.__file__).read_bytes()).hexdigest()[:12]


def plan_download(
    dataset: str,
    source: str | Sequence[str] | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    shapes: Mapping[str, int] | None = None,
    checksums: Mapping[str, tuple[str, str]] | None = None,
) -> DownloadPlan:
    """Resolve the sources and compute the artifact key (built-in datasets: from `shapes` options only).

    `shapes` holds `n_train_per_class`, `n_val`, `seed` (built-in ImageNet layout) or `n_train`,
    `n_val`, `seed` (built-in COCO layout).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    splits = _check_splits(splits)
    checksums = KNOWN_CHECKSUMS if checksums is None else checksums
    if spec.builtin:
        if source:
            raise ValueError(f"{dataset} is generated by uvit.shapes; it takes no source")
        options = _shapes_options(spec, shapes)
        config = {
            "dataset": dataset,
            "splits": list(splits),
            "generator": options,
            "shapes": _shapes_version(),
        }
        return DownloadPlan(dataset, splits, artifact_key(STAGE, config, code_version=CODE_VERSION), (), config)
    if shapes:
        raise ValueError(f"shapes options apply to the built-in datasets, not {dataset}")
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source or [])
    if not sources:
        if not spec.default_source:
            raise DatasetError(f"{dataset}: no source given. {spec.missing}".rstrip(". "))
        sources = [spec.default_source]
    files = tuple(
        SourceFile(role, kind, url, _tree_identity(url) if kind == "tree" else _file_identity(url, checksums))
        for role, kind, url in _resolve(spec, [os.fspath(s) for s in sources], splits)
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


def generate_builtin(plan: DownloadPlan, folder: str | os.PathLike) -> DownloadPlan:
    """Write a built-in dataset into a local folder and resolve it as a source tree (the key is kept)."""
    from uvit import shapes

    spec = plan.spec
    if not spec.builtin:
        raise ValueError(f"{plan.dataset} is not a built-in dataset")
    options = plan.config["generator"]
    if spec.layout == "imagenet":
        shapes.make_imagenet_like(folder, options["n_train_per_class"], options["n_val"], seed=options["seed"])
    else:
        shapes.make_coco_like(folder, options["n_train"], options["n_val"], seed=options["seed"])
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


class _Progress:
    """Per-unit completion markers inside the artifact folder (`_progress/<unit>.json`)."""

    def __init__(self, writer_url: str) -> None:
        self.url = writer_url

    def get(self, unit: str) -> dict[str, Any] | None:
        try:
            return paths.read_json(paths.join(self.url, "_progress", f"{unit}.json"))
        except FileNotFoundError:
            return None

    def put(self, unit: str, record: dict[str, Any]) -> None:
        paths.write_json_atomic(paths.join(self.url, "_progress", f"{unit}.json"), record)


def build_download(
    plan: DownloadPlan,
    store_root: str,
    local_files: Mapping[str, str] | None = None,
    *,
    checksums: Mapping[str, tuple[str, str]] | None = None,
    wait_s: float = 3600.0,
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
        return _Build(plan, writer, local, KNOWN_CHECKSUMS if checksums is None else checksums).run()

    return store.ensure(STAGE, plan.key, build, wait_s=wait_s)


class _Build:
    """One run of the extraction into a leased artifact folder."""

    def __init__(
        self,
        plan: DownloadPlan,
        writer: ArtifactWriter,
        local: Mapping[str, str],
        checksums: Mapping[str, tuple[str, str]],
    ) -> None:
        self.plan = plan
        self.writer = writer
        self.local = local
        self.checksums = checksums
        self.sink = Sink(writer.url)
        self.progress = _Progress(writer.url)
        # Members outside any unit (e.g. non-class entries of the train tar); recounted on every run.
        self.outer: dict[str, list[Any]] = {"files": [], "skipped": [], "rejected": []}
        self.records: dict[str, dict[str, Any]] = {"_outer": self.outer}
        self.sources: list[dict[str, Any]] = []

    def run(self) -> Manifest:
        started = time.time()
        try:
            self._verify_sources()
            layout = self.plan.spec.layout
            if layout == "imagenet":
                counts, extra = self._imagenet()
            elif layout == "cifar10":
                counts, extra = self._cifar10()
            elif layout == "celeba":
                counts, extra = self._celeba()
            else:
                counts, extra = self._coco()
        finally:
            self.sink.close()
        skipped = [s for r in self.records.values() for s in r["skipped"]]
        rejected = [s for r in self.records.values() for s in r["rejected"]]
        counts.update(skipped_members=len(skipped), rejected_members=len(rejected))
        extra.update(
            dataset=self.plan.dataset,
            layout=_PUBLISHED_LAYOUT[self.plan.spec.layout],
            splits=list(self.plan.splits),
            images_dir="images",
            generator=self.plan.config.get("generator"),
            sources=self.sources,
            skipped=skipped[:MAX_LISTED],
            rejected=rejected[:MAX_LISTED],
        )
        return Manifest(
            kind="dataset",
            counts=counts,
            versions={"download": CODE_VERSION},
            timings={"extract_s": round(time.time() - started, 3)},
            extra=extra,
        )

    # -- sources

    def _verify_sources(self) -> None:
        for source in self.plan.files:
            if source.kind == "tree":
                self.sources.append({"role": source.role, "kind": "tree", "url": source.url, **source.identity})
                continue
            unit = f"sources/{source.role}"
            record = self.progress.get(unit)
            if record is None:
                local = self.local.get(source.role, source.url)
                try:
                    record = verify_file(local, source.name, self.checksums)
                except ChecksumError:
                    if local != paths.normalize_url(source.url):  # a bad cached copy: fetch again next run
                        os.remove(local)
                    raise
                record = {"role": source.role, "kind": source.kind, "url": source.url, **record}
                self.progress.put(unit, record)
            self.sources.append(record)

    def _unit(self, unit: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        record = self.progress.get(unit)
        if record is None:
            record = run()
            self.sink.flush()  # files first, then the marker that says they are complete
            self.progress.put(unit, record)
        self.records[unit] = record
        return record

    def _tree_members(self, url: str) -> Iterator[Member]:
        for rel, info in list_tree(url).items():
            yield tree_member(url, rel, info)

    def _read_text(self, role: str) -> str:
        source = self.plan.file(role)
        assert source is not None
        fs, path = paths.filesystem(source.url)
        return fs.cat_file(path).decode("utf-8")

    # -- ImageNet

    def _imagenet(self) -> tuple[dict[str, int], dict[str, Any]]:
        names: dict[str, str] = {}
        if self.plan.file("synsets"):
            for line in self._read_text("synsets").splitlines():
                wnid, _, name = line.strip().partition(" ")
                if wnid:
                    names[wnid] = name.strip()
        per_class: dict[str, dict[str, int]] = {}
        if "train" in self.plan.splits:
            per_class["train"] = self._imagenet_train()
        if "val" in self.plan.splits:
            per_class["val"] = self._imagenet_val()
        wnids = sorted(per_class.get("train") or per_class.get("val") or {})
        unknown = sorted(set(per_class.get("val", {})) - set(wnids))
        if unknown:
            raise DatasetError(f"{self.plan.dataset}: val classes {unknown[:10]} have no train folder")
        classes = [{"wnid": w, "index": i, "name": names.get(w, "")} for i, w in enumerate(wnids)]
        counts = {f"{split}_images": sum(c.values()) for split, c in per_class.items()}
        counts["classes"] = len(classes)
        return counts, {"classes": classes, "images_per_class": per_class, "labelled": True}

    def _class_route(self, split: str, wnid: str) -> Callable[[str], tuple[str | None, str]]:
        def route(name: str) -> tuple[str | None, str]:
            base = name.replace("\\", "/").rsplit("/", 1)[-1]
            if not base.lower().endswith(IMAGE_SUFFIXES):
                return None, "not an image"
            if not _SAFE_COMPONENT.match(base):
                return None, "unusual file name"
            return f"images/{split}/{wnid}/{base}", ""

        return route

    def _imagenet_train(self) -> dict[str, int]:
        source = self.plan.file("train")
        assert source is not None
        counts: dict[str, int] = {}
        if source.kind == "archive":
            label = source.name
            for member in iter_tar(self.local["train"], label):
                wnid = member.name.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".tar")
                if member.is_dir and member.problem is None:
                    continue
                if member.problem or not member.name.endswith(".tar") or not _SAFE_COMPONENT.match(wnid):
                    self._outer_skip(label, member, "not a class archive (<wnid>.tar)")
                    continue

                def run(member: Member = member, wnid: str = wnid) -> dict[str, Any]:
                    existing = self.sink.existing(f"images/train/{wnid}")
                    inner = iter_tar(member.open(), f"{label}:{member.name}")
                    route = self._class_route("train", wnid)
                    return copy_members(self.sink, f"{label}:{member.name}", inner, route, existing)

                counts[wnid] = len(self._unit(f"train/{wnid}", run)["files"])
            return counts
        by_class: dict[str, dict[str, dict[str, Any]]] = {}
        for rel, info in list_tree(source.url).items():
            top, _, rest = rel.partition("/")
            if not rest or not _SAFE_COMPONENT.match(top):
                self._outer_skip(source.url, tree_member(source.url, rel, info), "not in a class folder")
                continue
            by_class.setdefault(top, {})[rel] = info
        for wnid, entries in sorted(by_class.items()):

            def run(entries: dict[str, dict[str, Any]] = entries, wnid: str = wnid) -> dict[str, Any]:
                existing = self.sink.existing(f"images/train/{wnid}")
                members = (tree_member(source.url, rel, info) for rel, info in entries.items())
                return copy_members(self.sink, source.url, members, self._class_route("train", wnid), existing)

            counts[wnid] = len(self._unit(f"train/{wnid}", run)["files"])
        return counts

    def _outer_skip(self, label: str, member: Member, reason: str) -> None:
        entry = {"archive": label, "member": member.name, "reason": member.problem or reason}
        self.outer["rejected" if member.problem else "skipped"].append(entry)

    def _imagenet_val(self) -> dict[str, int]:
        source = self.plan.file("val")
        assert source is not None
        labels: dict[str, str] = {}
        if self.plan.file("val_labels"):
            lines = self._read_text("val_labels").splitlines()
            if not lines or not lines[0].startswith("ImageId"):
                raise DatasetError("LOC_val_solution.csv: expected the header 'ImageId,PredictionString'")
            for line in lines[1:]:
                image_id, _, prediction = line.strip().partition(",")
                if image_id:
                    if not prediction.split() or not _SAFE_COMPONENT.match(prediction.split()[0]):
                        raise DatasetError(f"LOC_val_solution.csv: no class for {image_id!r}")
                    labels[image_id] = prediction.split()[0]

        def route(name: str) -> tuple[str | None, str]:
            parts = name.replace("\\", "/").split("/")
            base = parts[-1]
            if not base.lower().endswith(IMAGE_SUFFIXES):
                return None, "not an image"
            if not _SAFE_COMPONENT.match(base):
                return None, "unusual file name"
            if labels:
                wnid = labels.get(base.rsplit(".", 1)[0])
                if wnid is None:
                    return None, "no label in LOC_val_solution.csv"
            elif len(parts) >= 2 and _SAFE_COMPONENT.match(parts[-2]):
                wnid = parts[-2]
            else:
                return None, "not in a class folder"
            return f"images/val/{wnid}/{base}", ""

        def run() -> dict[str, Any]:
            existing = self.sink.existing("images/val")
            if source.kind == "archive":
                members: Iterable[Member] = iter_tar(self.local["val"], source.name)
            else:
                members = self._tree_members(source.url)
            return copy_members(self.sink, source.name, members, route, existing)

        record = self._unit("val", run)
        counts: dict[str, int] = {}
        for path in record["files"]:
            wnid = path.split("/")[2]
            counts[wnid] = counts.get(wnid, 0) + 1
        return dict(sorted(counts.items()))

    # -- COCO

    def _coco(self) -> tuple[dict[str, int], dict[str, Any]]:
        year = self.plan.spec.year
        counts: dict[str, int] = {}
        files: dict[str, set[str]] = {}
        for split in self.plan.splits:
            source = self.plan.file(split)
            assert source is not None

            def route(name: str, split: str = split) -> tuple[str | None, str]:
                parts = name.replace("\\", "/").split("/")
                if len(parts) != 2 or parts[0] != f"{split}{year}":
                    return None, f"not in {split}{year}/"
                if not parts[1].lower().endswith(IMAGE_SUFFIXES) or not _SAFE_COMPONENT.match(parts[1]):
                    return None, "not an image"
                return f"images/{split}/{parts[1]}", ""

            def run(source: SourceFile = source, split: str = split, route: Any = route) -> dict[str, Any]:
                existing = self.sink.existing(f"images/{split}")
                if source.kind == "archive":
                    members: Iterable[Member] = iter_zip(self.local[split], source.name)
                else:
                    prefix = f"{split}{year}/"
                    members = (dataclasses.replace(m, name=prefix + m.name) for m in self._tree_members(source.url))
                return copy_members(self.sink, source.name, members, route, existing)

            record = self._unit(f"images_{split}", run)
            files[split] = {p.rsplit("/", 1)[-1] for p in record["files"]}
            counts[f"{split}_images"] = len(files[split])

        wanted = {f"annotations/captions_{s}{year}.json": f"captions/captions_{s}.json" for s in self.plan.splits}

        def captions_run() -> dict[str, Any]:
            annotations = self.plan.file("annotations")
            if annotations is not None:
                route = lambda name: (wanted.get(name), "not a captions file of a requested split")
                return copy_members(
                    self.sink,
                    annotations.name,
                    iter_zip(self.local["annotations"], annotations.name),
                    route,
                    {},
                )
            members = []
            for split in self.plan.splits:
                source = self.plan.file(f"captions_{split}")
                assert source is not None
                fs, path = paths.filesystem(source.url)
                name = f"annotations/captions_{split}{year}.json"
                members.append(tree_member(source.url, "", fs.info(path)))
                members[-1] = dataclasses.replace(members[-1], name=name, problem=None)
            return copy_members(self.sink, "annotations", members, lambda n: (wanted.get(n), ""), {})

        record = self._unit("captions", captions_run)
        found = set(record["files"])
        captions: dict[str, Any] = {}
        for split in self.plan.splits:
            rel = f"captions/captions_{split}.json"
            if rel not in found:
                raise DatasetError(f"{self.plan.dataset}: annotations hold no captions_{split}{year}.json")
            try:
                document = paths.read_json(paths.join(self.writer.url, rel))
                # Entries with wrong types are dropped and counted by the encode stage
                # (storage.items.caption_items); this summary just leaves them out.
                images = {image["id"]: image["file_name"] for image in document["images"]
                          if isinstance(image, dict) and isinstance(image.get("id"), (int, str))}  # fmt: skip
                annotations = document["annotations"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetError(f"captions_{split}{year}.json: not a COCO captions file ({e})") from None
            listed = set(images.values())
            captioned = {a["image_id"] for a in annotations
                         if isinstance(a, dict) and isinstance(a.get("image_id"), (int, str))}  # fmt: skip
            counts[f"{split}_captions"] = len(annotations)
            captions[split] = {
                "file": rel,
                "images_listed": len(images),
                "images_captioned": len(captioned & set(images)),
                "listed_images_missing": len(listed - files[split]),
                "images_without_captions_entry": len(files[split] - listed),
            }
        return counts, {"captions": captions}

    # -- CIFAR-10 (binary version)

    def _cifar10(self) -> tuple[dict[str, int], dict[str, Any]]:
        source = self.plan.file("archive") or self.plan.file("batches")
        assert source is not None
        label = source.name
        wanted = dict((name, split) for split, name in cifar10.iter_batches(self.plan.splits))
        sizes: dict[str, int] = {}
        data: dict[str, bytes] = {}
        meta_text = None
        if source.kind == "archive":
            members: Iterable[Member] = iter_tar(self.local["archive"], label)
        else:
            members = self._tree_members(source.url)
        # One pass over the (gzipped) archive: sizes of every batch (for the index offsets) and
        # the bytes of the unfinished ones; at most the whole data set (~180 MB) in memory.
        for member in members:
            if cifar10.is_pickle_member(member.name):
                raise DatasetError(f"{label}: member {member.name}: {cifar10.PICKLE_MESSAGE}")
            base = member.name.replace("\\", "/").rsplit("/", 1)[-1]
            if member.problem or (not member.is_dir and base != cifar10.META and base not in wanted):
                self._outer_skip(label, member, "not a batch file of a requested split")
            elif base == cifar10.META:
                meta_text = member.read().decode("utf-8", errors="replace")
            elif base in wanted and not member.is_dir:
                if base in sizes:
                    self._outer_skip(label, member, f"second copy of {base}")
                    continue
                sizes[base] = member.size
                if self.progress.get(f"{wanted[base]}/{base}") is None:
                    data[base] = member.read()
        missing = [name for name in wanted if name not in sizes]
        if missing:
            raise DatasetError(f"{label}: no {', '.join(missing)} (not the CIFAR-10 binary version?)")
        try:
            names = cifar10.class_names(meta_text)
        except ValueError as e:
            raise DatasetError(f"{label}: {e}") from None
        if any(not _SAFE_COMPONENT.match(name) for name in names):
            raise DatasetError(f"{label}: {cifar10.META}: class names {list(names)} are not plain folder names")

        per_class: dict[str, dict[str, int]] = {split: dict.fromkeys(names, 0) for split in self.plan.splits}
        offset = dict.fromkeys(self.plan.splits, 0)
        problems: dict[str, int] = {}
        for split, base in cifar10.iter_batches(self.plan.splits):
            first = offset[split]
            offset[split] += cifar10.record_count(sizes[base])

            def run(split: str = split, base: str = base, first: int = first) -> dict[str, Any]:
                existing = self.sink.existing(f"images/{split}")
                records, skipped = cifar10.parse_batch(data[base])
                files = []
                for i, class_index, image in records:
                    rel = f"images/{split}/{names[class_index]}/{first + i:05d}.png"
                    png = png_bytes(image)
                    if existing.get(rel) != len(png):
                        self.sink.put(rel, png)
                    files.append(rel)
                skipped_entries = [{"archive": label, "member": f"{base} record {i}", "reason": reason}
                                   for i, reason in skipped]  # fmt: skip
                return {"files": files, "skipped": skipped_entries, "rejected": []}

            record = self._unit(f"{split}/{base}", run)
            for rel in record["files"]:
                per_class[split][rel.split("/")[2]] += 1
            for entry in record["skipped"]:
                reason = "truncated record" if entry["reason"].startswith("truncated") else "label byte not 0-9"
                problems[reason] = problems.get(reason, 0) + 1
        classes = [{"wnid": name, "index": i, "name": name} for i, name in enumerate(names)]
        counts = {f"{split}_images": sum(c.values()) for split, c in per_class.items()}
        counts.update(classes=len(classes), skipped_records=sum(problems.values()))
        extra = {"classes": classes, "images_per_class": per_class, "labelled": True, "skipped_records": problems}
        return counts, extra

    # -- CelebA

    def _celeba(self) -> tuple[dict[str, int], dict[str, Any]]:
        source = self.plan.file("images")
        assert source is not None
        partition, malformed = celeba.parse_partition(self._read_text("partition"))
        other = "in another partition"  # not a problem: routed to its own split (or the unpublished test set)
        counts: dict[str, int] = {}
        for split in self.plan.splits:
            wanted = celeba.PARTITIONS[split]
            # Files the partition list does not name (or outside the folder) count once, in the first split.
            first = split == self.plan.splits[0]
            unlisted = "not in list_eval_partition.txt" if first else other
            misplaced = f"not in {celeba.FOLDER}/" if first else other

            def route(name: str, wanted: int = wanted, unlisted: str = unlisted, misplaced: str = misplaced,
                      split: str = split) -> tuple[str | None, str]:  # fmt: skip
                parts = name.replace("\\", "/").split("/")
                if len(parts) != 2 or parts[0] != celeba.FOLDER:
                    return None, misplaced
                if parts[1] not in partition:
                    return None, unlisted
                if partition[parts[1]] != wanted:
                    return None, other
                return f"images/{split}/{parts[1]}", ""

            def run(split: str = split, route: Any = route) -> dict[str, Any]:
                existing = self.sink.existing(f"images/{split}")
                if source.kind == "archive":
                    members: Iterable[Member] = iter_zip(self.local["images"], source.name)
                else:
                    prefix = f"{celeba.FOLDER}/"
                    members = (dataclasses.replace(m, name=prefix + m.name) for m in self._tree_members(source.url))
                record = copy_members(self.sink, source.name, members, route, existing)
                record["skipped"] = [s for s in record["skipped"] if s["reason"] != other]
                return record

            record = self._unit(f"images_{split}", run)
            counts[f"{split}_images"] = len(record["files"])
            listed = sum(1 for p in partition.values() if p == wanted)
            counts[f"{split}_listed_images_missing"] = listed - len(record["files"])
            if first:
                counts["images_not_in_partition_list"] = sum(s["reason"] == unlisted for s in record["skipped"])
        counts["malformed_partition_lines"] = len(malformed)
        counts["test_partition_images"] = sum(1 for p in partition.values() if p == 2)
        extra = {"labelled": False, "partition_problems": malformed[:MAX_LISTED]}
        return counts, extra


def download_dataset(
    dataset: str,
    source: str | Sequence[str] | None,
    store_root: str,
    *,
    splits: Sequence[str] = SPLITS,
    cache_dir: str | os.PathLike | None = None,
    shapes: Mapping[str, int] | None = None,
    checksums: Mapping[str, tuple[str, str]] | None = None,
) -> DownloadResult:
    """Plan, transfer, verify, extract and publish a dataset without Prefect (a cache hit does nothing)."""
    plan = plan_download(dataset, source, splits=splits, shapes=shapes, checksums=checksums)
    store = ArtifactStore(store_root)
    if store.exists(STAGE, plan.key):
        return DownloadResult(store.url_for(STAGE, plan.key), plan.key, store.manifest(STAGE, plan.key), True)
    with contextlib.ExitStack() as stack:
        if plan.spec.builtin:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"uvit-{dataset}-"))
            plan = generate_builtin(plan, folder)
        local = transfer_sources(plan, cache_dir)
        manifest = build_download(plan, store_root, local, checksums=checksums)
    return DownloadResult(store.url_for(STAGE, plan.key), plan.key, manifest, False)
