"""The parity fixture in ``tests/fixtures`` is the authors'-code fixture, byte for byte.

``tests/fixtures/unsamv2_decoder_parity.sha256`` pins the SHA-256 of every file (``sha256sum`` format).
A contributor's clone therefore runs the parity tests without anything beside it; when the team's
shared copy (``../shared/fixtures``) is present, the two must be identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "unsamv2_decoder_parity"
DIGESTS = FIXTURES / "unsamv2_decoder_parity.sha256"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "unsamv2_decoder_parity"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pinned() -> dict[str, str]:
    rows = (line.split() for line in DIGESTS.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in rows}


def test_fixture_files_match_their_pinned_digests():
    pinned = _pinned()
    assert set(pinned) == {"README.md", "cases.json", "expected.npz", "inputs.npz", "keys.json", "weights.npz"}
    on_disk = {p.name for p in FIXTURE.iterdir() if p.is_file()}
    assert on_disk == set(pinned), f"files differ from the pinned list: {sorted(on_disk ^ set(pinned))}"
    for name, digest in pinned.items():
        assert _digest(FIXTURE / name) == digest, f"{name} was modified"


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared fixture copy beside the repository")
def test_fixture_is_byte_identical_to_the_shared_copy():
    for name in _pinned():
        assert _digest(SHARED / name) == _digest(FIXTURE / name), name
