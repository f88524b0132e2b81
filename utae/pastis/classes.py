"""PASTIS semantic classes: names, special labels and a colour map.

Index ``i`` of :data:`CLASS_NAMES` and :data:`CLASS_COLORS` is the semantic label ``i`` stored
in channel 0 of ``ANNOTATIONS/TARGET_<ID>.npy``. Label 0 is the background (land that is not
one of the 18 crop types), and label 19 is the void label: parcels that lie mostly outside
the patch, ignored in the loss and in every metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.colors import ListedColormap

CLASS_NAMES: list[str] = [
    "Background",
    "Meadow",
    "Soft winter wheat",
    "Corn",
    "Winter barley",
    "Winter rapeseed",
    "Spring barley",
    "Sunflower",
    "Grapevine",
    "Beet",
    "Winter triticale",
    "Winter durum wheat",
    "Fruits vegetables flowers",
    "Potatoes",
    "Leguminous fodder",
    "Soybeans",
    "Orchard",
    "Mixed cereal",
    "Sorghum",
    "Void label",
]

N_CLASSES: int = len(CLASS_NAMES)
BACKGROUND_LABEL: int = 0
VOID_LABEL: int = 19

# One distinct colour per class, as "#rrggbb". Background is a light neutral grey, void a dark
# grey; crops use hues that hint at the crop (greens for grass, yellows for cereals, ...).
CLASS_COLORS: list[str] = [
    "#e8e8e0",  # 0 Background
    "#4daf4a",  # 1 Meadow
    "#f2c12e",  # 2 Soft winter wheat
    "#e6550d",  # 3 Corn
    "#c7a252",  # 4 Winter barley
    "#ffff33",  # 5 Winter rapeseed
    "#a6761d",  # 6 Spring barley
    "#ff7f00",  # 7 Sunflower
    "#984ea3",  # 8 Grapevine
    "#e7298a",  # 9 Beet
    "#8c6d31",  # 10 Winter triticale
    "#bcbd22",  # 11 Winter durum wheat
    "#f781bf",  # 12 Fruits vegetables flowers
    "#8c564b",  # 13 Potatoes
    "#66c2a5",  # 14 Leguminous fodder
    "#377eb8",  # 15 Soybeans
    "#1b9e77",  # 16 Orchard
    "#d9d98c",  # 17 Mixed cereal
    "#b2182b",  # 18 Sorghum
    "#303030",  # 19 Void label
]


def cmap() -> "ListedColormap":
    """A matplotlib ``ListedColormap`` with the 20 class colours, index ``i`` for label ``i``.

    Use it with ``vmin=0, vmax=19`` (or ``interpolation="nearest"`` and integer images) so that
    each label maps to its own colour.
    """
    from matplotlib.colors import ListedColormap

    return ListedColormap(CLASS_COLORS, name="pastis")
