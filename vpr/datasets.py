"""Loading place datasets: any folder of images, or a dataset registered in ``datasets/registry.toml``."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spikebot.progress import progress
from spikebot.provenance import SOURCE_ROOT
from vpr.data import GroundTruth, PlaceDataset, Traverse
from vpr.errors import DatasetError
from vpr.preprocess import to_grayscale

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"})
Split = Literal["calibration", "test", "all"]

# In a source checkout the registry is datasets/registry.toml; an installed wheel carries a copy inside vpr/.
_REGISTRY_FILES = (SOURCE_ROOT / "datasets" / "registry.toml", Path(__file__).with_name("registry.toml"))


@dataclass(frozen=True)
class FetchRecipe:
    url: str | None = None
    subdir: str | None = None
    instructions: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: layout, ground-truth rule, licence and fetch recipe of a named dataset."""

    name: str
    description: str
    source: str
    traverses: dict[str, str]
    ground_truth: Literal["frame_aligned", "file"]
    default_tolerance: int
    licence: str
    default_reference: str
    default_query: str
    image_pattern: str = "*"
    ground_truth_file: str | None = None
    dark_frame_threshold: float | None = None
    calibration_places: int | None = None
    fetch: FetchRecipe = field(default_factory=FetchRecipe)

    @classmethod
    def from_toml(cls, name: str, entry: dict[str, Any]) -> DatasetSpec:
        entry = dict(entry)
        fetch = FetchRecipe(**entry.pop("fetch", {}))
        return cls(name=name, fetch=fetch, **entry)

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"


def load_registry() -> dict[str, DatasetSpec]:
    for path in _REGISTRY_FILES:
        if path.is_file():
            with path.open("rb") as handle:
                return {name: DatasetSpec.from_toml(name, entry) for name, entry in tomllib.load(handle).items()}
    raise DatasetError(f"dataset registry not found (looked for {', '.join(map(str, _REGISTRY_FILES))})")


def get_spec(name: str) -> DatasetSpec:
    registry = load_registry()
    if name not in registry:
        raise DatasetError(f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(registry))}")
    return registry[name]


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """``--data-root``, else ``$SPIKEBOT_DATA``, else the repository's ``datasets/`` folder."""
    if data_root is not None:
        return Path(data_root).expanduser().resolve()
    if os.environ.get("SPIKEBOT_DATA"):
        return Path(os.environ["SPIKEBOT_DATA"]).expanduser().resolve()
    return (SOURCE_ROOT / "datasets").resolve()


def _natural_key(path: Path) -> list[Any]:
    """Sort ``img2`` before ``img10``; identical to plain sorting for zero-padded names."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | Path, pattern: str = "*") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"traverse folder not found: {folder}")
    images = [p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DatasetError(f"traverse folder has no images ({pattern}, {'/'.join(sorted(IMAGE_SUFFIXES))}): {folder}")
    return sorted(images, key=_natural_key)


def folder_traverse(folder: str | Path, pattern: str = "*", name: str | None = None) -> Traverse:
    folder = Path(folder)
    return Traverse(name or folder.name, tuple(str(p) for p in list_images(folder, pattern)))


def read_ground_truth_file(path: str | Path, n_query: int, n_reference: int) -> GroundTruth:
    """VPR-Bench ``.npy`` (object rows ``[query_index, [reference indices]]``) or ``query_index,reference_index`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ground-truth file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            rows = np.load(path, allow_pickle=True)
            pairs = [(int(row[0]), int(ref)) for row in rows for ref in np.atleast_1d(row[1])]
        except (ValueError, TypeError, IndexError, OSError, EOFError) as error:
            raise DatasetError(
                f"cannot read ground truth {path}: expected VPR-Bench rows [query_index, [reference indices]] ({error})"
            ) from error
    elif path.suffix.lower() in (".csv", ".txt"):
        pairs = []
        with path.open(newline="") as handle:
            for line_number, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].strip().startswith("#"):
                    continue
                try:
                    pairs.append((int(row[0]), int(row[1])))
                except (ValueError, IndexError) as error:
                    if line_number == 1:  # a header line
                        continue
                    raise DatasetError(
                        f"{path}, line {line_number}: expected 'query_index,reference_index', got {row}"
                    ) from error
    else:
        raise DatasetError(f"unsupported ground-truth file {path}: use a VPR-Bench .npy or a .csv of index pairs")
    return GroundTruth.from_pairs(np.array(pairs, dtype=np.int64), n_query, n_reference, source=str(path))


def load_folder_dataset(
    reference_dir: str | Path,
    query_dir: str | Path,
    *,
    ground_truth_file: str | Path | None = None,
    tolerance: int = 0,
    pattern: str = "*",
    name: str | None = None,
) -> PlaceDataset:
    """Any two folders of images; without a ground-truth file, frame ``i`` of each is assumed the same place."""
    reference = folder_traverse(reference_dir, pattern)
    query = folder_traverse(query_dir, pattern)
    info: dict[str, Any] = {"source": "folders", "reference_dir": str(reference_dir), "query_dir": str(query_dir)}
    if ground_truth_file is not None:
        truth = read_ground_truth_file(ground_truth_file, len(query), len(reference))
        info.update(ground_truth="file", ground_truth_file=str(ground_truth_file))
    else:
        if len(reference) != len(query):
            raise DatasetError(
                f"without a ground-truth file, reference and query must be frame-aligned, but {reference_dir} has "
                f"{len(reference)} images and {query_dir} has {len(query)}; pass --ground-truth FILE"
            )
        positions = np.arange(len(query))
        truth = GroundTruth.from_positions(positions, positions, tolerance)
        info.update(ground_truth="frame_aligned", tolerance=tolerance)
    return PlaceDataset(name or Path(reference_dir).parent.name or "folder", reference, query, truth, info)


def dark_places(traverses: list[Traverse], threshold: float) -> np.ndarray:
    """Indices of places whose image is darker on average than ``threshold`` (0-255 grey) in any traverse."""
    dark = np.zeros(len(traverses[0]), dtype=bool)
    for traverse in traverses:
        means = np.array(
            [to_grayscale(image).mean() for image in progress(traverse, desc=f"dark frames {traverse.name}", total=len(traverse))]
        )
        dark |= means < threshold
    return np.flatnonzero(dark)


def split_places(n_places: int, calibration_places: int | None, split: Split, dataset: str) -> np.ndarray:
    """Calibration = the first ``calibration_places`` (kept) places, test = the rest."""
    if split == "all":
        return np.arange(n_places)
    if calibration_places is None:
        raise DatasetError(f"dataset {dataset!r} has no calibration/test split; use --split all")
    if split == "calibration":
        return np.arange(min(calibration_places, n_places))
    if split == "test":
        return np.arange(calibration_places, n_places)
    raise DatasetError(f"unknown split {split!r}: expected calibration, test or all")


def load_registered(
    name: str,
    reference: str | None = None,
    query: str | None = None,
    *,
    data_root: str | Path | None = None,
    split: Split = "all",
    tolerance: int | None = None,
) -> PlaceDataset:
    """A registered dataset: traverses looked up in the registry, dark frames filtered, split applied."""
    spec = get_spec(name)
    reference = reference or spec.default_reference
    query = query or spec.default_query
    for traverse_name in (reference, query):
        if traverse_name not in spec.traverses:
            raise DatasetError(
                f"dataset {name!r} has no traverse {traverse_name!r}; traverses: {', '.join(spec.traverses)}"
            )
    tolerance = spec.default_tolerance if tolerance is None else tolerance
    info: dict[str, Any] = {"source": spec.source, "licence": spec.licence, "reference": reference, "query": query}

    if spec.is_synthetic:
        from vpr.synthetic import RouteConfig, synthetic_traverses

        route = RouteConfig()
        all_traverses = synthetic_traverses(route)
        info["generator"] = {"module": "vpr.synthetic", **dataclasses.asdict(route)}
    else:
        root = resolve_data_root(data_root) / name
        if not root.is_dir():
            hint = f"run `spikebot vpr fetch {name}`" if spec.fetch.url else spec.fetch.instructions
            raise DatasetError(f"dataset folder not found: {root}. {hint}")
        info["root"] = str(root)
        all_traverses = {
            traverse: folder_traverse(root / folder, spec.image_pattern, name=traverse)
            for traverse, folder in spec.traverses.items()
            if traverse in (reference, query) or spec.dark_frame_threshold is not None
        }
    reference_traverse, query_traverse = all_traverses[reference], all_traverses[query]

    if spec.ground_truth == "file":
        truth = read_ground_truth_file(
            resolve_data_root(data_root) / name / str(spec.ground_truth_file), len(query_traverse), len(reference_traverse)
        )
        if split != "all":
            raise DatasetError(f"dataset {name!r} defines no calibration/test split; use --split all")
        info.update(ground_truth="file", ground_truth_file=spec.ground_truth_file, split="all")
        return PlaceDataset(name, reference_traverse, query_traverse, truth, info)

    lengths = {t.name: len(t) for t in all_traverses.values()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"dataset {name!r} should be frame-aligned but its traverses differ in length: {lengths}")
    kept = np.arange(len(reference_traverse))
    if spec.dark_frame_threshold is not None:
        dark = dark_places(list(all_traverses.values()), spec.dark_frame_threshold)
        kept = np.setdiff1d(kept, dark)
        info["dark_frame_filter"] = {
            "rule": f"mean grey level < {spec.dark_frame_threshold} in any of {sorted(all_traverses)}",
            "removed": int(len(dark)),
            "removed_frames": [Path(reference_traverse.frames[i]).name for i in dark],
        }
    selected = kept[split_places(len(kept), spec.calibration_places, split, name)]
    truth = GroundTruth.from_positions(selected, selected, tolerance)
    info.update(
        ground_truth="frame_aligned",
        tolerance=tolerance,
        split=split,
        calibration_places=spec.calibration_places,
        first_frame=Path(reference_traverse.frames[selected[0]]).name,
        last_frame=Path(reference_traverse.frames[selected[-1]]).name,
    )
    return PlaceDataset(
        name, reference_traverse.subset(selected), query_traverse.subset(selected), truth, info
    )
