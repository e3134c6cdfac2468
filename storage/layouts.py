"""Extraction of each dataset's source format into the layout a `download` artifact publishes.

One `build` runs in a leased artifact folder: it verifies the sources, then extracts unit by unit
(an ImageNet class, a COCO split, a CIFAR-10 batch file, a CelebA partition), writing a marker
under `_progress/` after each, so a crash redoes at most one unit; and it returns the manifest
(counts, classes or captions summary, sources, skipped and rejected members). Planning, keys and
transfers are `storage.datasets`; member safety is `storage.archives`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from storage import caption_files, celeba, cifar10, imagenet_devkit, paths
from storage.archives import (
    DatasetError,
    Member,
    Sink,
    copy_members,
    iter_tar,
    iter_zip,
    list_tree,
    tree_member,
)
from storage.artifacts import ArtifactWriter, Manifest
from storage.images import png_bytes
from storage.transfer import ChecksumError, verify_file

if TYPE_CHECKING:
    from storage.datasets import DownloadPlan, SourceFile

__all__ = ["PUBLISHED_LAYOUT", "build"]

MAX_LISTED = 1000  # skipped/rejected members listed in the manifest (all are counted)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# What the artifact holds for each source format: class folders (read with the manifest's classes),
# COCO images and captions, or unlabelled images.
PUBLISHED_LAYOUT = {
    "imagenet": "imagenet",
    "coco": "coco",
    "cifar10": "imagenet",
    "celeba": "unlabelled",
    "folder": "imagenet",
}


def build(
    plan: DownloadPlan,
    writer: ArtifactWriter,
    local: Mapping[str, str],
    checksums: Mapping[str, tuple[str, str]],
    code_version: str,
) -> Manifest:
    """Verify the sources and extract the plan's units into `writer`'s folder; the manifest (not yet published)."""
    return _Build(plan, writer, local, checksums, code_version).run()


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


class _Build:
    """One run of the extraction into a leased artifact folder."""

    def __init__(
        self,
        plan: DownloadPlan,
        writer: ArtifactWriter,
        local: Mapping[str, str],
        checksums: Mapping[str, tuple[str, str]],
        code_version: str,
    ) -> None:
        self.plan = plan
        self.writer = writer
        self.local = local
        self.checksums = checksums
        self.code_version = code_version
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
            if layout == "folder" and self.plan.file("captions"):  # images with a captions file: COCO's layout
                counts, extra = self._captioned_folder()
            elif layout in ("imagenet", "folder"):  # a folder of class folders is ImageNet's train tree
                counts, extra = self._imagenet()
            elif layout == "cifar10":
                counts, extra = self._cifar10()
            elif layout == "celeba":
                counts, extra = self._celeba()
            else:
                counts, extra = self._coco()
        finally:
            self.sink.close()
        self._check_not_empty(counts)
        skipped = [s for r in self.records.values() for s in r["skipped"]]
        rejected = [s for r in self.records.values() for s in r["rejected"]]
        counts.update(skipped_members=len(skipped), rejected_members=len(rejected))
        extra.update(
            dataset=self.plan.dataset,
            layout="coco" if self.plan.file("captions") else PUBLISHED_LAYOUT[self.plan.spec.layout],
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
            versions={"download": self.code_version},
            timings={"extract_s": round(time.time() - started, 3)},
            extra=extra,
        )

    def _check_not_empty(self, counts: dict[str, int]) -> None:
        """A split without images is an error before anything is published (not an empty dataset)."""
        for split in self.plan.splits:
            if counts.get(f"{split}_images", 0) == 0:
                source = next((f for f in self.plan.files if f.role in (split, "images", "archive", "batches")), None)
                where = paths.redact_url(source.url) if source is not None else "the source"
                left_out = sum(len(r["rejected"]) + len(r["skipped"]) for r in self.records.values())
                raise DatasetError(
                    f"{self.plan.dataset}: no images in the {split} split of {where}"
                    f" ({left_out} members skipped or rejected); nothing was published"
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
        if record is not None and not self._files_present(record.get("files", [])):
            record = None  # a finished unit lost files (a damaged artifact being rebuilt): redo it, resuming
        if record is None:
            record = run()
            self.sink.flush()  # files first, then the marker that says they are complete
            self.progress.put(unit, record)
        self.records[unit] = record
        return record

    def _files_present(self, files: list[str]) -> bool:
        """Whether every file a unit wrote is still there (one listing per folder)."""
        by_folder: dict[str, set[str]] = {}
        for rel in files:
            by_folder.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else "", set()).add(rel)
        return all(wanted <= set(self.sink.existing(folder)) for folder, wanted in by_folder.items())

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
        devkit = self.plan.file("val_devkit")
        if devkit is not None:
            local = self.local.get("val_devkit", devkit.url) if devkit.kind == "archive" else devkit.url
            labels = imagenet_devkit.val_labels(devkit.kind, paths.filesystem(local)[1] if devkit.kind == "archive"
                                                else local)  # fmt: skip
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
                    return None, "no label in LOC_val_solution.csv" if devkit is None else "no label in the devkit"
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

    # -- a folder of images with a captions file (storage.caption_files), published in COCO's layout

    def _captioned_folder(self) -> tuple[dict[str, int], dict[str, Any]]:
        source, captions_file = self.plan.file("images"), self.plan.file("captions")
        assert source is not None and captions_file is not None
        try:
            table, dropped = caption_files.parse_captions(self._read_text("captions"), captions_file.name)
        except (UnicodeDecodeError, ValueError) as e:
            raise DatasetError(f"{self.plan.dataset}: {captions_file.name}: {e}") from None
        entries = list_tree(source.url)
        present = {rel for rel, info in entries.items()  # links and special files are rejected, never read
                   if rel.lower().endswith(IMAGE_SUFFIXES) and not info.get("problem")}  # fmt: skip
        by_name: dict[str, str] = {}
        for rel in sorted(set(table) & present):  # the first of two paths that flatten to one name wins
            by_name.setdefault(caption_files.published_name(rel), rel)
        usable = sorted(by_name.values())
        if not usable:
            raise DatasetError(f"{self.plan.dataset}: no image in {paths.redact_url(source.url)} has a caption "
                               f"in {captions_file.name}")  # fmt: skip
        split_of = caption_files.split_of(usable)
        first = self.plan.splits[0]
        counts: dict[str, int] = {}
        summary: dict[str, Any] = {}
        for split in self.plan.splits:

            def route(name: str, split: str = split) -> tuple[str | None, str]:
                if name == captions_file.name:
                    return None, "the captions file"
                if not name.lower().endswith(IMAGE_SUFFIXES):
                    return None, "not an image"
                if name not in table:
                    return None, f"no caption in {captions_file.name}"
                if split_of.get(name) != split:
                    return None, f"same published name as {by_name[caption_files.published_name(name)]}"
                return f"images/{split}/{caption_files.published_name(name)}", ""

            def run(split: str = split, route: Any = route) -> dict[str, Any]:
                existing = self.sink.existing(f"images/{split}")
                # each split's images, and everything not in a split counted once (with the first split)
                members = (tree_member(source.url, rel, info) for rel, info in entries.items()
                           if split_of.get(rel, first) == split)  # fmt: skip
                return copy_members(self.sink, source.url, members, route, existing)

            record = self._unit(f"images_{split}", run)
            written = set(record["files"])  # the captions list only what was copied (not empty or rejected files)
            chosen = {rel: table[rel] for rel in usable if split_of[rel] == split
                      and f"images/{split}/{caption_files.published_name(rel)}" in written}  # fmt: skip
            document = caption_files.coco_document(chosen)
            rel_json = f"captions/captions_{split}.json"
            paths.write_json_atomic(paths.join(self.writer.url, rel_json), document)
            counts[f"{split}_images"] = len(record["files"])
            counts[f"{split}_captions"] = len(document["annotations"])
            summary[split] = {"file": rel_json, "images_listed": len(document["images"])}
        missing = sorted(set(table) - present)
        if missing:
            dropped["file listed but not in the folder"] = len(missing)
        return counts, {"captions": summary, "caption_file": captions_file.name, "caption_entries_dropped": dropped}

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
