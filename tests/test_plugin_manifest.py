"""The npe2 manifest is valid and reading it stays cheap (no torch, no sam2)."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(str(files("napari_unsamv2") / "napari.yaml"))
    assert manifest.name == "napari-unsamv2"


def test_manifest_is_discoverable_through_the_entry_point():
    from importlib.metadata import entry_points

    names = [ep.name for ep in entry_points(group="napari.manifest")]
    assert "napari-unsamv2" in names


def test_plugin_import_is_light():
    code = "import sys, napari_unsamv2, unsamv2_engine; assert 'torch' not in sys.modules and 'sam2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
