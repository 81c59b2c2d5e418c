"""napari sample data: a synthetic fluorescence image and two bundled scikit-image images.

All three work offline and import neither torch nor sam2:

``sample_cells``
    "Synthetic cells (nuclei, nucleoli)": ``unsamv2_engine.synth.generate_sample(seed=0,
    modality="fluorescence", ndim="2", shape=(512, 512))``; an Image layer ``"synthetic cells"``
    of the generated image ([512, 512], or [512, 512, 3] if the generator renders colour).
``sample_ihc``
    "Immunohistochemistry (scikit-image)": ``skimage.data.immunohistochemistry()``, an RGB
    ``uint8`` [512, 512, 3] image.
``sample_cell``
    "Cell (scikit-image)": ``skimage.data.cell()``, a greyscale ``uint8`` [660, 550] image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sample_cell", "sample_cells", "sample_ihc"]

SYNTH_SHAPE = (512, 512)

LayerData = tuple[Any, dict, str]


def sample_cells() -> list[LayerData]:
    """Synthetic fluorescence cells with nuclei and nucleoli (seed 0, 512 x 512)."""
    from unsamv2_engine.synth import generate_sample  # lazy: the generator is not light

    sample = generate_sample(seed=0, modality="fluorescence", ndim="2", shape=SYNTH_SHAPE)
    image = np.asarray(sample.image)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    return [(image, {"name": "synthetic cells", "rgb": rgb}, "image")]


def sample_ihc() -> list[LayerData]:
    """scikit-image's immunohistochemistry image (RGB, 512 x 512, bundled)."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry", "rgb": True}, "image")]


def sample_cell() -> list[LayerData]:
    """scikit-image's cell image (greyscale, 660 x 550, bundled)."""
    from skimage import data

    return [(data.cell(), {"name": "cell", "rgb": False}, "image")]
