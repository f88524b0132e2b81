"""The on-disk layout of PASTIS: file and folder names, in one torch-free place.

Both the reader (:mod:`utae.pastis.dataset`) and the generator (:mod:`utae.pastis.synthetic`, kept free of torch) use these
names, so the two cannot drift apart. Under a dataset ``root``::

    metadata.geojson             METADATA_FILE
    NORM_S2_patch.json           NORM_FILE, one entry norm_key(fold) = "Fold_<k>" per fold
    DATA_S2/S2_<ID>.npy          image_path(root, ID)
    ANNOTATIONS/TARGET_<ID>.npy  target_path(root, ID)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["METADATA_FILE", "NORM_FILE", "DATA_DIR", "TARGET_DIR", "image_path", "target_path", "norm_key"]

METADATA_FILE = "metadata.geojson"
NORM_FILE = "NORM_S2_patch.json"
DATA_DIR = "DATA_S2"
TARGET_DIR = "ANNOTATIONS"


def image_path(root: str | Path, patch_id: int) -> Path:
    """``root/DATA_S2/S2_<patch_id>.npy``: the ``(T, 10, H, W)`` Sentinel-2 series of a patch."""
    return Path(root) / DATA_DIR / f"S2_{int(patch_id)}.npy"


def target_path(root: str | Path, patch_id: int) -> Path:
    """``root/ANNOTATIONS/TARGET_<patch_id>.npy``: the ``(3, H, W)`` annotation of a patch."""
    return Path(root) / TARGET_DIR / f"TARGET_{int(patch_id)}.npy"


def norm_key(fold: int) -> str:
    """The key of fold ``fold``'s statistics in ``NORM_S2_patch.json``: ``"Fold_<fold>"``."""
    return f"Fold_{int(fold)}"
