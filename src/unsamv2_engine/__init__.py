"""UnSAMv2 engine: SAM 2.1 plus a granularity module, on official ``sam2``.

Importing this package is cheap: torch and sam2 are imported by the submodules that need
them (``unsamv2_engine.model``, ``unsamv2_engine.session``), never at package import.
"""

__version__ = "0.1.0"
