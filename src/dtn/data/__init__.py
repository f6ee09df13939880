"""Dataset registry: name -> DatasetSource.

    from dtn import data
    split = data.load("mnist", "train")          # Split(images uint8 NHWC, labels int64)
    data.names()                                  # registered names

A path (or `folder:PATH`) instead of a name loads any folder of images (see image_folder.py).
To add a dataset: write a module that builds a DatasetSource and add it to `_modules()` below.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import DATA_DIR_ENV, DatasetSource, FileCheck, Split, cache_root, class_histogram, data_root


def _registry() -> dict[str, DatasetSource]:
    from . import avatars, celeba, clothing, deepfashion, idx, svhn, synth_digits

    sources = [*idx.SOURCES, svhn.SOURCE, synth_digits.SOURCE, celeba.SOURCE, clothing.SOURCE, avatars.SOURCE,
               deepfashion.SOURCE]
    return {s.name: s for s in sources}


def names() -> list[str]:
    return sorted(_registry()) + ["image-folder"]


def get(name: str, skip_bad: bool = False) -> DatasetSource:
    """Look a dataset up by registry name, or treat `folder:PATH` / an existing directory as an image folder
    (skip_bad: unreadable images in a folder are skipped and counted instead of stopping the load)."""
    registry = _registry()
    if name in registry:
        return registry[name]
    from .image_folder import image_folder_source

    if name.startswith("folder:"):
        return image_folder_source(Path(name[len("folder:"):]), skip_bad=skip_bad)
    if name == "image-folder":
        raise DataError("image-folder needs a path: pass the folder itself or folder:PATH")
    if Path(name).expanduser().is_dir():
        return image_folder_source(Path(name).expanduser(), skip_bad=skip_bad)
    raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(names())}, or a folder path")


def load(name: str, split: str, data_dir: str | Path | None = None, skip_bad: bool = False) -> Split:
    source = get(name, skip_bad)
    if split not in source.splits:
        raise DataError(f"{source.name} has no split {split!r}; splits: {', '.join(source.splits)}")
    return source.load(split, data_root(data_dir))


__all__ = ["DATA_DIR_ENV", "DatasetSource", "FileCheck", "Split", "cache_root", "class_histogram",
           "data_root", "get", "load", "names"]
