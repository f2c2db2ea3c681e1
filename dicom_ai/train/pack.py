"""Pack the training data for a remote GPU run into a compact copy with the same layout and manifests.

    python -m dicom_ai.train.pack --source ../shared/data --dest .gpu/data

Images are re-encoded as lossy WebP (grey); masks, labels, manifests, READMEs and the MNI volume are copied
unchanged. Every manifest path stays valid: `datasets.resolve_image` finds the `.webp` beside the listed name.
The lossy re-encoding is a property of the GPU-trained models and is stated in their model cards.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2

from dicom_ai.train.datasets import MNI_RELATIVE, read_manifest

FOLDERS = ("lgg", "brain_tumor_det", "fracatlas", "modality", "xray_bodypart", "mri_planes")


@dataclass(frozen=True)
class PackSettings:
    """WebP quality per folder (images only; masks and labels stay lossless)."""

    quality: dict[str, int]
    default_quality: int = 80


DEFAULT_SETTINGS = PackSettings(quality={"fracatlas": 85, "lgg": 85})


def _encode(source: Path, dest: Path, quality: int) -> int:
    image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot decode {source}")
    ok, data = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode {source} as WebP")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data.tobytes())
    return len(data)


def _copy(source: Path, dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest.stat().st_size


def pack(source: Path, dest: Path, settings: PackSettings = DEFAULT_SETTINGS, workers: int = 4) -> dict[str, int]:
    """Write the packed copy; returns bytes written per folder."""
    jobs: list[tuple[str, Path, Path, int | None]] = []
    for name in ("README.md", "SOURCES.md"):
        jobs.append(("top", source / name, dest / name, None))
    for folder in FOLDERS:
        for extra in ("README.md", "manifest.csv"):
            if (source / folder / extra).is_file():
                jobs.append((folder, source / folder / extra, dest / folder / extra, None))
    quality = lambda folder: settings.quality.get(folder, settings.default_quality)  # noqa: E731
    seen: set[str] = set()

    def image(relative: str) -> None:
        if relative in seen or not relative:
            return
        seen.add(relative)
        folder = relative.split("/")[0]
        jobs.append((folder, source / relative, (dest / relative).with_suffix(".webp"), quality(folder)))

    for row in read_manifest(source, "lgg/manifest.csv"):
        image(row["path"])
        jobs.append(("lgg", source / row["mask_path"], dest / row["mask_path"], None))
    for row in read_manifest(source, "brain_tumor_det/manifest.csv"):
        image(row["path"])
        jobs.append(("brain_tumor_det", source / row["label_path"], dest / row["label_path"], None))
    for row in read_manifest(source, "fracatlas/manifest.csv"):
        image(row["path"])
        if row["label_path"]:
            jobs.append(("fracatlas", source / row["label_path"], dest / row["label_path"], None))
    for manifest in ("modality/manifest.csv", "xray_bodypart/manifest.csv"):
        for row in read_manifest(source, manifest):
            image(row["path"])
    jobs.append(("mri_planes", source / MNI_RELATIVE, dest / MNI_RELATIVE, None))

    def run(job: tuple[str, Path, Path, int | None]) -> tuple[str, int]:
        folder, src, dst, q = job
        return folder, (_encode(src, dst, q) if q is not None else _copy(src, dst))

    totals: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for folder, size in pool.map(run, jobs):
            totals[folder] = totals.get(folder, 0) + size
    return totals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicom_ai.train.pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="shared/data")
    parser.add_argument("--dest", type=Path, required=True, help="e.g. .gpu/data (must not exist or be empty)")
    args = parser.parse_args(argv)
    if args.dest.exists() and any(args.dest.iterdir()):
        parser.error(f"{args.dest} is not empty; remove it first")
    totals = pack(args.source, args.dest)
    for folder, size in sorted(totals.items()):
        print(f"{folder:16s} {size / 2**20:7.2f} MiB")
    print(f"{'total':16s} {sum(totals.values()) / 2**20:7.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
