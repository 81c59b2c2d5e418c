"""Writing and reading samples and datasets (byte-reproducible: no timestamps in any file).

Per sample folder ``<name>/``:

``image.tif``
    the raw image in its own dtype, uncompressed; the JSON ImageDescription holds ``axes``,
    ``pixel_size_um``, ``spacing_um`` and ``unit``; X/Y resolution tags give pixels per centimetre.
``image_rgb.png``
    2D only: the uint8 RGB image the model sees (:func:`unsamv2_engine.intensity.to_uint8_rgb`).
``channels.tif``
    only when ``config.channels``: the separate stain channels (``CYX`` / ``CZYX`` / ``TCYX``).
``labels_<level>.tif``
    one instance label image per level (:func:`unsamv2_engine.io.images.write_labels`), ids unique
    across levels; stacks for 3D (Z pages) and time-lapse (T pages).
``hierarchy.csv``
    one row per object (per object and frame for time-lapse); see :data:`HIERARCHY_COLUMNS`.
``coco.json``
    COCO document, see :func:`unsamv2_engine.synth.annotations.coco_for_sample`.
``sample.json``
    seed, modality, ndim, shape, axes, spacing, levels, channel names, generator version, config.
``tracks.txt``
    time-lapse only: Cell Tracking Challenge style ``L B E P`` lines (id, first frame, last frame,
    mother id = 0: there are no divisions), for every object of every level.

Dataset root: ``manifest.json`` with the generator version, library versions, config, the dataset
seed, every sample's name and seed, and the SHA-256 of every written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from unsamv2_engine.io.coco import write_coco
from unsamv2_engine.io.images import read_labels, write_json, write_labels, write_table_csv

from .annotations import coco_for_sample, hierarchy_rows
from .config import LEVELS, SynthConfig
from .generate import GENERATOR_VERSION, Sample, generate_sample
from .scene import ObjectRecord

__all__ = ["MANIFEST", "file_sha256", "iter_dataset", "load_sample", "sample_seeds", "verify_manifest",
           "write_dataset", "write_sample"]

MANIFEST = "manifest.json"
FORMAT = "unsamv2-synth"


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-sample seeds of a dataset: ``SeedSequence(seed).spawn(n)``, each reduced to a 63-bit int."""
    children = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]


def sample_name(index: int, n: int) -> str:
    return f"sample_{index:0{max(4, len(str(max(n - 1, 0))))}d}"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def _write_image_tif(path: Path, sample: Sample) -> None:
    import tifffile

    rgb = sample.modality == "he"
    px = float(sample.pixel_size_um)
    meta = {"axes": sample.axes, "pixel_size_um": px, "spacing_um": list(sample.spacing_um), "unit": "um",
            "modality": sample.modality}
    tifffile.imwrite(path, sample.image, photometric="rgb" if rgb else "minisblack", metadata=meta,
                     resolution=(1e4 / px, 1e4 / px), resolutionunit="CENTIMETER", software=False)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, format="PNG", compress_level=1)


def _tracks(sample: Sample) -> str:
    frames: dict[int, list[int]] = {}
    for o in sample.objects:
        frames.setdefault(o.id, []).append(int(o.frame or 0))
    return "".join(f"{i} {min(f)} {max(f)} 0\n" for i, f in sorted(frames.items()))


def write_sample(sample: Sample, out_dir: str | os.PathLike, name: str) -> Path:
    """Write one sample to ``out_dir/name/`` (see the module docstring); returns that folder."""
    from unsamv2_engine.intensity import to_uint8_rgb

    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    _write_image_tif(folder / "image.tif", sample)
    if sample.ndim == "2":
        _write_png(folder / "image_rgb.png", to_uint8_rgb(sample.image))
    if sample.channels is not None:
        import tifffile

        axes = {"2": "CYX", "3": "CZYX", "t": "TCYX"}[sample.ndim]
        tifffile.imwrite(folder / "channels.tif", sample.channels, photometric="minisblack",
                         metadata={"axes": axes, "channels": list(sample.channel_names),
                                   "pixel_size_um": sample.pixel_size_um}, software=False)
    stack_axes = {"2": "YX", "3": "ZYX", "t": "TYX"}[sample.ndim]
    for k, level in enumerate(sample.levels):
        write_labels(folder / f"labels_{level}.tif", sample.labels[level],
                     metadata={"level": k, "level_name": level, "axes": stack_axes,
                               "spacing_um": list(sample.spacing_um)})
    rows, columns = hierarchy_rows(sample.objects)
    write_table_csv(folder / "hierarchy.csv", rows, columns)
    write_coco(folder / "coco.json", coco_for_sample(sample, name=name))
    write_json(folder / "sample.json", {
        "format": FORMAT, "generator_version": sample.generator_version, "name": name, "seed": int(sample.seed),
        "modality": sample.modality, "ndim": sample.ndim, "shape": list(sample.image.shape),
        "dtype": str(sample.image.dtype), "axes": sample.axes, "pixel_size_um": sample.pixel_size_um,
        "spacing_um": list(sample.spacing_um), "levels": list(sample.levels),
        "channel_names": list(sample.channel_names), "config": sample.config.to_dict()})
    if sample.ndim == "t":
        (folder / "tracks.txt").write_text(_tracks(sample))
    return folder


def _generate_and_write(job: tuple[str, str, int, str, str, tuple[int, ...] | None, dict]) -> str:
    out_dir, name, seed, modality, ndim, shape, cfg = job
    sample = generate_sample(seed, modality=modality, ndim=ndim, shape=shape, config=SynthConfig.from_dict(cfg))
    write_sample(sample, out_dir, name)
    return name


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("numpy", "scipy", "scikit-image", "tifffile", "pycocotools", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def write_dataset(out_dir: str | os.PathLike, n: int, seed: int, *, modality: str = "fluorescence",
                  ndim: str = "2", shape: tuple[int, ...] | None = None, config: SynthConfig | None = None,
                  progress: bool = True, workers: int = 1) -> Path:
    """Generate and write ``n`` samples plus ``manifest.json``; returns the dataset folder.

    Parameters
    ----------
    out_dir : dataset folder (created).
    n : number of samples (``sample_0000`` ...).
    seed : dataset seed; sample ``i`` uses ``sample_seeds(seed, n)[i]``.
    modality, ndim, shape, config : as for :func:`generate_sample`.
    progress : show a tqdm progress bar on stderr.
    workers : number of processes. 1 (default) works in this process. More start a ``spawn`` process
        pool, which re-imports the caller's ``__main__``: only use it from a script guarded by
        ``if __name__ == "__main__":`` (the ``unsamv2 synth`` command is). The files are identical
        whatever the number of workers.
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n = int(n)
    ndim = str(ndim)
    cfg = config if config is not None else SynthConfig()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    seeds = sample_seeds(seed, n)
    names = [sample_name(i, n) for i in range(n)]
    shape_t = tuple(int(v) for v in shape) if shape is not None else None
    jobs = [(str(root), nm, sd, modality, ndim, shape_t, cfg.to_dict()) for nm, sd in zip(names, seeds)]
    from tqdm import tqdm

    with tqdm(total=n, disable=not progress, file=sys.stderr, unit="sample", desc="synth") as bar:
        if workers <= 1:
            for job in jobs:
                _generate_and_write(job)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_generate_and_write, jobs, chunksize=1):
                    bar.update(1)

    files = {}
    for nm in names:
        for path in sorted((root / nm).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = file_sha256(path)
    from unsamv2_engine import __version__

    write_json(root / MANIFEST, {
        "format": FORMAT, "generator": "unsamv2_engine.synth", "generator_version": GENERATOR_VERSION,
        "engine_version": __version__, "library_versions": _library_versions(), "dataset_seed": int(seed),
        "n": n, "modality": modality, "ndim": ndim, "shape": list(shape_t) if shape_t else None,
        "levels": list(LEVELS), "config": cfg.to_dict(),
        "samples": [{"name": nm, "seed": sd} for nm, sd in zip(names, seeds)], "files": files})
    return root


def verify_manifest(root: str | os.PathLike) -> list[str]:
    """Files whose SHA-256 differs from ``manifest.json`` (or are missing); empty when all match."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file() or file_sha256(path) != digest:
            bad.append(rel)
    return bad


# --------------------------------------------------------------------------- reading


def _parse_cell(value: str) -> Any:
    if value == "":
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def _read_objects(path: Path) -> list[ObjectRecord]:
    import csv

    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            v = {k: _parse_cell(x) for k, x in row.items()}
            out.append(ObjectRecord(id=int(v["label"]), level=int(v["level"]), level_name=str(v["level_name"]),
                                    parent=int(v["parent"]), root=int(v["root"]), area=int(v["area"]),
                                    bbox=tuple(int(x) for x in v["bbox"]),
                                    centroid=tuple(float(x) for x in v["centroid"]),
                                    granularity=float(v["granularity"]),
                                    granularity_graco=float(v["granularity_graco"]),
                                    granularity_cell=None if v["granularity_cell"] is None
                                    else float(v["granularity_cell"]),
                                    frame=None if v.get("frame") is None else int(v["frame"])))
    return out


def load_sample(path: str | os.PathLike) -> Sample:
    """Read a sample folder written by :func:`write_sample` back into a :class:`Sample`.

    ``image``, ``labels`` (per level, stacks for 3D / time-lapse), ``objects`` (from
    ``hierarchy.csv``) and the metadata of ``sample.json``; ``channels`` when written. The COCO
    document is not parsed (see :func:`unsamv2_engine.io.coco.read_coco`); its path is in
    ``sample.extra["coco"]``.
    """
    import tifffile

    folder = Path(path)
    meta = json.loads((folder / "sample.json").read_text())
    image = tifffile.imread(folder / "image.tif")
    labels = {level: read_labels(folder / f"labels_{level}.tif")[0] for level in meta["levels"]}
    top = max((int(v.max()) for v in labels.values() if v.size), default=0)
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32  # as generate_sample
    labels = {level: v.astype(dtype, copy=False) for level, v in labels.items()}
    channels = tifffile.imread(folder / "channels.tif") if (folder / "channels.tif").is_file() else None
    return Sample(image=image, labels=labels, objects=_read_objects(folder / "hierarchy.csv"),
                  levels=list(meta["levels"]), pixel_size_um=float(meta["pixel_size_um"]), seed=int(meta["seed"]),
                  modality=meta["modality"], ndim=str(meta["ndim"]), config=SynthConfig.from_dict(meta["config"]),
                  spacing_um=tuple(meta["spacing_um"]), axes=meta["axes"], channels=channels,
                  channel_names=tuple(meta.get("channel_names", ())),
                  generator_version=meta["generator_version"],
                  extra={"name": meta.get("name", folder.name), "path": str(folder),
                         "coco": str(folder / "coco.json")})


def iter_dataset(root: str | os.PathLike) -> Iterator[Sample]:
    """Yield the samples of a dataset in manifest order (sorted sample folders without a manifest)."""
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        names = [s["name"] for s in json.loads(manifest.read_text())["samples"]]
    else:
        names = sorted(p.name for p in root.iterdir() if (p / "sample.json").is_file())
    for name in names:
        yield load_sample(root / name)

