"""napari plugin for UnSAMv2: segment anything at any granularity.

The plugin is a thin shell over :mod:`unsamv2_engine`; importing it must stay cheap
(no torch, no sam2), because napari reads the manifest at start-up.
"""

__version__ = "0.1.0"
