"""Which pairs a ``stlpips-score`` run scores: one pair, a CSV of pairs, two folders, or one reference and a folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import click

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


@dataclass(frozen=True)
class Pair:
    """One row of work. ``ref``/``dist`` are the names written to the output (as the user gave them);
    ``ref_path``/``dist_path`` are where the files are read from. ``problem`` marks a pair that cannot be scored
    before any image is read (e.g. no matching file in the other folder)."""

    index: int
    ref: str
    dist: str
    ref_path: Path
    dist_path: Path
    problem: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.ref, self.dist)


def _images_in(folder: Path) -> list[Path]:
    return scan_folder(folder)[0]


def scan_folder(folder: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """The image files directly in ``folder`` (by extension, :data:`IMAGE_SUFFIXES`; sorted), and what was not
    read: ``{reason: [names]}`` for subfolders (not searched) and files of other extensions."""
    if not folder.is_dir():
        raise click.BadParameter(f"{folder} is not a folder")
    found, skipped = [], {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
        elif p.is_dir():
            skipped.setdefault("a folder: subfolders are not searched", []).append(p.name + "/")
        else:
            skipped.setdefault(f"extension not one of {' '.join(sorted(IMAGE_SUFFIXES))}", []).append(p.name)
    return found, skipped


def from_csv(path: Path) -> list[Pair]:
    """Rows of a CSV with ``ref,dist`` columns (a header naming them, or the first two columns). Relative paths
    are taken relative to the CSV's folder."""
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise click.BadParameter(f"{path} has no rows", param_hint="--pairs")
    header = [c.strip().lower() for c in rows[0]]
    if "ref" in header and "dist" in header:
        i_ref, i_dist, body = header.index("ref"), header.index("dist"), rows[1:]
    else:
        i_ref, i_dist, body = 0, 1, rows
    pairs = []
    for n, row in enumerate(body):
        if len(row) <= max(i_ref, i_dist):
            raise click.BadParameter(f"{path}: row {n + 1} has fewer than two columns", param_hint="--pairs")
        ref, dist = row[i_ref].strip(), row[i_dist].strip()
        pairs.append(Pair(n, ref, dist, path.parent / ref, path.parent / dist))
    return pairs


def from_dirs(ref_dir: Path, dist_dir: Path) -> list[Pair]:
    """Files of ``ref_dir`` matched with the file of the same name in ``dist_dir``; a missing partner makes an
    error row so that the gap shows in the output."""
    dist_names = {p.name for p in _images_in(dist_dir)}
    pairs = []
    for n, ref in enumerate(_images_in(ref_dir)):
        problem = "" if ref.name in dist_names else f"no file named {ref.name} in {dist_dir}"
        pairs.append(Pair(n, str(ref), str(dist_dir / ref.name), ref, dist_dir / ref.name, problem))
    return pairs


def from_ref(ref: Path, dist_dir: Path) -> list[Pair]:
    """One reference against every image of ``dist_dir``."""
    return [Pair(n, str(ref), str(d), ref, d) for n, d in enumerate(_images_in(dist_dir))]
