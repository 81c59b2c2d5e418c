"""Reading images and writing results (label TIFFs, CSV tables, JSON) to disk.

This subpackage imports numpy, tifffile and Pillow only (no torch, napari or Qt).
"""

from unsamv2_engine.io.images import (
    ImageReadError,
    read_image,
    read_labels,
    to_jsonable,
    write_json,
    write_labels,
    write_table_csv,
)

__all__ = [
    "ImageReadError",
    "read_image",
    "read_labels",
    "to_jsonable",
    "write_json",
    "write_labels",
    "write_table_csv",
]
