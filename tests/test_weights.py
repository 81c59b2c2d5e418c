"""Tests of ``unsamv2_engine.weights``: registry, cache and download transport.

Downloads are tested against a local HTTP server on 127.0.0.1 (never the internet);
it serves small fake files made here, which are transport test data only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from unsamv2_engine import weights
from unsamv2_engine.weights import (
    ChecksumMismatchError,
    IncompleteDownloadError,
    OfflineError,
    UnknownModelError,
    WeightsError,
    WeightsNotFoundError,
)

NAME = "sam2.1-tiny"  # any registry entry; the mirror makes it fetch from the local server
FILENAME = weights.REGISTRY[NAME].filename


def _fake_checkpoint() -> bytes:
    """A small zip archive (a torch checkpoint is a zip file), deterministic content."""
    payload = random.Random(0).randbytes(6000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("archive/data.pkl", date_time=(2024, 1, 1, 0, 0, 0))
        zf.writestr(info, payload)
    return buf.getvalue()


CKPT = _fake_checkpoint()
CKPT_SHA = hashlib.sha256(CKPT).hexdigest()


# ----------------------------------------------------------------------- local server


@dataclass
class Route:
    """What the fake server answers for one file name."""

    body: bytes
    status: int = 200
    content_type: str = "application/octet-stream"
    content_length: int | None = None  # None: the true length


@dataclass
class FakeServer:
    """Handle on the running local server."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def serve(self, filename: str, route: Route) -> None:
        """Serve ``route`` at ``/<filename>``."""
        self.routes[filename] = route


def _handler_for(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``server``'s routes and hit list."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            name = self.path.lstrip("/")
            server.hits.append(name)
            route = server.routes.get(name)
            if route is None:
                self.send_error(404)
                return
            length = len(route.body) if route.content_length is None else route.content_length
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(route.body)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep test output quiet

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServer]:
    """Local HTTP server on 127.0.0.1; cache and mirror env vars point at tmp / server."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    fake = FakeServer(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/")
    httpd.RequestHandlerClass = _handler_for(fake)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNSAMV2_WEIGHTS_MIRROR", fake.base_url)
    # the fake files are not the real ones: the test entry has no published size or digest
    monkeypatch.setitem(weights.REGISTRY, NAME, dataclasses.replace(weights.REGISTRY[NAME], sha256=None,
                                                                    size_bytes=None))
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def known_hash(monkeypatch: pytest.MonkeyPatch) -> weights.ModelEntry:
    """Give the test entry the SHA-256 of :data:`CKPT`."""
    entry = dataclasses.replace(weights.REGISTRY[NAME], sha256=CKPT_SHA, size_bytes=len(CKPT))
    monkeypatch.setitem(weights.REGISTRY, NAME, entry)
    return entry


def _cache_files() -> list[str]:
    """Names of the files in the cache directory (empty if it does not exist)."""
    directory = weights.cache_dir()
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- registry


def test_registry_names_and_official_urls() -> None:
    assert set(weights.REGISTRY) == {
        "sam2.1-tiny",
        "sam2.1-small",
        "sam2.1-base-plus",
        "sam2.1-large",
        "unsamv2",
        "unsamv2-plus",
    }
    base = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
    for size in ("tiny", "small", "base_plus", "large"):
        entry = weights.REGISTRY[f"sam2.1-{size.replace('_', '-')}"]
        assert entry.url == f"{base}sam2.1_hiera_{size}.pt"
        assert entry.filename == f"sam2.1_hiera_{size}.pt"
        assert (entry.family, entry.size, entry.licence) == ("sam2.1", size, "Apache-2.0")
    assert [weights.REGISTRY[f"sam2.1-{s}"].approx_mb for s in ("tiny", "small")] == [149, 176]
    for name, drive_id in (
        ("unsamv2", "1iYmYFeJxY4aI1lG5F2ZFL8tzzyGkCgX0"),
        ("unsamv2-plus", "1M56QN2CWfou7h5azxJvc_igmbQh9D2af"),
    ):
        entry = weights.REGISTRY[name]
        assert entry.family == "unsamv2" and entry.size == "small"
        assert f"id={drive_id}" in entry.url
    # published size + SHA-256 (WEIGHTS.md): Meta's SAM 2.1 files, the UnSAMv2+ digest; plain UnSAMv2 has none
    pins = {"tiny": (156008466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
            "large": (898083611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318")}
    for size, (nbytes, digest) in pins.items():
        entry = weights.REGISTRY[f"sam2.1-{size}"]
        assert (entry.size_bytes, entry.sha256) == (nbytes, digest)
    assert all(len(weights.REGISTRY[f"sam2.1-{s}"].sha256 or "") == 64 for s in ("small", "base-plus"))
    assert weights.REGISTRY["unsamv2-plus"].sha256 == "4067a6966b06df984828f537da0f02389ff28655a8985a1e1f4a3e1de4077195"
    assert weights.REGISTRY["unsamv2"].sha256 is None
    assert weights.DEFAULT_MODEL in weights.REGISTRY


def test_get_entry_unknown_lists_names() -> None:
    with pytest.raises(UnknownModelError, match="sam2.1-tiny") as info:
        weights.get_entry("unsamv3")
    assert isinstance(info.value, WeightsError) and isinstance(info.value, RuntimeError)


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path / "c"))
    assert weights.cache_dir() == tmp_path / "c"
    assert weights.cached_path(NAME) == tmp_path / "c" / FILENAME
    assert not (tmp_path / "c").exists()  # not created until needed
    monkeypatch.delenv("UNSAMV2_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "unsamv2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "unsamv2"


def test_import_does_not_pull_torch() -> None:
    code = "import sys, unsamv2_engine.weights; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_mirror_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSAMV2_WEIGHTS_MIRROR", raising=False)
    assert weights.download_url(NAME) == weights.REGISTRY[NAME].url
    monkeypatch.setenv("UNSAMV2_WEIGHTS_MIRROR", "https://mirror.example/w//")
    assert weights.download_url(NAME) == f"https://mirror.example/w/{FILENAME}"


def test_sha256_and_verify(tmp_path: Path, known_hash: weights.ModelEntry) -> None:
    path = tmp_path / "f.pt"
    path.write_bytes(CKPT)
    assert weights.sha256_file(path, chunk=100) == CKPT_SHA
    assert weights.verify_file(path, known_hash) == "published"
    assert json.loads(weights.record_path(path).read_text())["sha256"] == CKPT_SHA  # remembered beside it
    corrupt = bytearray(CKPT)
    corrupt[100] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ChecksumMismatchError) as info:
        weights.verify_file(path, known_hash)
    message = str(info.value)
    assert str(path) in message and CKPT_SHA in message and f"--download {NAME} --force" in message
    path.write_bytes(CKPT + b"x")  # wrong size: refused without hashing
    with pytest.raises(ChecksumMismatchError, match=f"{len(CKPT) + 1:,} bytes but"):
        weights.verify_file(path, known_hash)


def test_unpublished_digest_is_recorded_then_checked(tmp_path: Path) -> None:
    """Plain UnSAMv2 has no published digest: the first verified file's digest is recorded and enforced."""
    path = tmp_path / weights.REGISTRY["unsamv2"].filename
    path.write_bytes(CKPT)
    assert weights.verify_file(path, weights.REGISTRY["unsamv2"]) == "recorded"
    assert json.loads(weights.record_path(path).read_text())["source"] == "recorded"
    corrupt = bytearray(CKPT)
    corrupt[-1] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    os.utime(path, ns=(1, 1))  # another modification time: the record no longer vouches for it
    with pytest.raises(ChecksumMismatchError, match="recorded when it was first downloaded"):
        weights.verify_file(path, weights.REGISTRY["unsamv2"])


def test_garbage_in_cache_is_not_a_model(capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 11 item 4: 25 bytes under a registry name are neither listed as cached nor used."""
    from unsamv2_engine.cli import main

    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path))
    monkeypatch.setenv("UNSAMV2_WEIGHTS_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"PK" + b"x" * 23)
    (tmp_path / "unsamv2_plus_ckpt.pt").write_bytes(b"PK" + b"x" * 23)
    rows = {r["name"]: r for r in weights.list_models()}
    assert rows["sam2.1-tiny"]["cached"] is False and rows["sam2.1-tiny"]["size_ok"] is False
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bad size" in out and "published" in out and "none yet" in out  # plain UnSAMv2: no digest yet
    code = main(["models", "--download", "unsamv2-plus", "-q"])  # re-fetches (and fails: no network)
    err = capsys.readouterr().err
    assert code == 2 and "cached file is bad" in err and "no network" in err
    with pytest.raises(ChecksumMismatchError, match="--force"):
        weights.resolve_checkpoint("unsamv2-plus")


# --------------------------------------------------------------------------- download


def test_good_download(
    server: FakeServer, known_hash: weights.ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "_CHUNK", 1024)  # several chunks for a few KB
    server.serve(FILENAME, Route(CKPT))
    calls: list[tuple[int, int | None]] = []
    path = weights.download(
        NAME, progress=True, progress_callback=lambda d, t: calls.append((d, t)), timeout=5
    )
    assert path == weights.cache_dir() / FILENAME
    assert path.read_bytes() == CKPT
    assert _cache_files() == [FILENAME, f"{FILENAME}.sha256"]  # no .part left; the verified digest beside it
    done = [d for d, _ in calls]
    assert len(calls) >= 2 and done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == len(CKPT)
    assert {t for _, t in calls} == {len(CKPT)}
    assert server.hits == [FILENAME]


def test_callback_exception_cancels(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "_CHUNK", 1024)
    server.serve(FILENAME, Route(CKPT))

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int | None) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        weights.download(NAME, progress=False, progress_callback=cancel, timeout=5)
    assert _cache_files() == []


def test_legacy_pickle_accepted(server: FakeServer, tmp_path: Path) -> None:
    server.serve(FILENAME, Route(b"\x80\x02" + b"\x00" * 100))
    dest = tmp_path / "elsewhere"
    path = weights.download(NAME, dest_dir=dest, progress=False, timeout=5)
    assert path == dest / FILENAME and path.is_file()


def test_checksum_mismatch_leaves_nothing(
    server: FakeServer, known_hash: weights.ModelEntry
) -> None:
    corrupt = bytearray(CKPT)
    corrupt[-10] ^= 0xFF
    server.serve(FILENAME, Route(bytes(corrupt)))
    with pytest.raises(ChecksumMismatchError, match=CKPT_SHA):
        weights.download(NAME, progress=False, timeout=5)
    assert _cache_files() == []


def test_truncated_file_from_mirror_is_not_cached(server: FakeServer, known_hash: weights.ModelEntry) -> None:
    """Issue 11 item 4: a mirror serving a cut file (with a matching Content-Length) is caught by the pinned size."""
    server.serve(FILENAME, Route(CKPT[: len(CKPT) // 2]))
    with pytest.raises(ChecksumMismatchError, match="truncated"):
        weights.download(NAME, progress=False, timeout=5)
    assert _cache_files() == []


def test_truncated_download(server: FakeServer) -> None:
    server.serve(FILENAME, Route(CKPT[:1000], content_length=len(CKPT)))
    with pytest.raises(IncompleteDownloadError):
        weights.download(NAME, progress=False, timeout=5)
    assert _cache_files() == []


def test_html_content_type(server: FakeServer) -> None:
    html = b"<!DOCTYPE html><html><body>Quota exceeded</body></html>"
    server.serve(FILENAME, Route(html, content_type="text/html; charset=utf-8"))
    with pytest.raises(WeightsError, match="HTML") as info:
        weights.download(NAME, progress=False, timeout=5)
    message = str(info.value)
    assert weights.REGISTRY[NAME].url in message  # where to get it in a browser
    assert str(weights.cache_dir() / FILENAME) in message  # where to put it
    assert _cache_files() == []


def test_html_body_with_binary_content_type(server: FakeServer) -> None:
    server.serve(FILENAME, Route(b"\n<html><body>Sign in</body></html>"))
    with pytest.raises(WeightsError, match="HTML"):
        weights.download(NAME, progress=False, timeout=5)
    assert _cache_files() == []


def test_not_a_checkpoint(server: FakeServer) -> None:
    server.serve(FILENAME, Route(b"this is plainly not a checkpoint"))
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        weights.download(NAME, progress=False, timeout=5)
    assert _cache_files() == []


def test_http_error_is_not_offline(server: FakeServer) -> None:
    with pytest.raises(WeightsError, match="404") as info:
        weights.download(NAME, progress=False, timeout=5)
    assert not isinstance(info.value, OfflineError)
    assert _cache_files() == []


def test_unreachable_server_is_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path))
    monkeypatch.setenv("UNSAMV2_WEIGHTS_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(OfflineError) as info:
        weights.download(NAME, progress=False, timeout=5)
    message = str(info.value)
    assert message.startswith("no network: could not reach http://127.0.0.1:")
    assert "--checkpoint" in message and str(tmp_path / FILENAME) in message
    assert list(tmp_path.iterdir()) == []


def test_cached_file_needs_no_network(
    server: FakeServer, known_hash: weights.ModelEntry
) -> None:
    path = weights.cached_path(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(CKPT)
    assert weights.download(NAME, progress=False) == path
    assert server.hits == []


def test_cached_corrupt_file_is_reported(
    server: FakeServer, known_hash: weights.ModelEntry
) -> None:
    path = weights.cached_path(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK garbage")
    with pytest.raises(ChecksumMismatchError, match="delete"):
        weights.resolve_checkpoint(NAME)  # using it: refused, with what to do
    assert server.hits == []
    server.serve(FILENAME, Route(CKPT))  # an explicit download replaces the bad cached file
    assert weights.download(NAME, progress=False, timeout=5) == path
    assert path.read_bytes() == CKPT and server.hits == [FILENAME]


# -------------------------------------------------------------------- resolve / list


def test_resolve_local_path(tmp_path: Path) -> None:
    local = tmp_path / "my.pt"
    local.write_bytes(b"anything")
    assert weights.resolve_checkpoint(local) == local
    assert weights.resolve_checkpoint(str(local)) == local


def test_resolve_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        weights.resolve_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        weights.resolve_checkpoint(str(tmp_path / "dir" / "nope"))
    with pytest.raises(UnknownModelError):
        weights.resolve_checkpoint("unsamv3")


def test_resolve_name_not_cached(server: FakeServer) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_checkpoint(NAME)
    message = str(info.value)
    assert f"unsamv2 models --download {NAME}" in message
    assert str(weights.cached_path(NAME)) in message and "--checkpoint" in message
    assert server.hits == []


def test_resolve_name_downloads_when_asked(server: FakeServer) -> None:
    server.serve(FILENAME, Route(CKPT))
    path = weights.resolve_checkpoint(NAME, download_missing=True, progress=False)
    assert path == weights.cached_path(NAME) and path.read_bytes() == CKPT
    assert weights.resolve_checkpoint(NAME) == path  # now cached: no new request
    assert server.hits == [FILENAME]


def test_list_models(server: FakeServer) -> None:
    rows = {row["name"]: row for row in weights.list_models()}
    assert set(rows) == set(weights.REGISTRY)
    assert not any(row["cached"] for row in rows.values())
    path = weights.cached_path(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(CKPT)
    row = {row["name"]: row for row in weights.list_models()}[NAME]
    assert row["cached"] is True and row["path"] == str(path)
    assert row["url"] == weights.REGISTRY[NAME].url
    assert {"family", "size", "approx_mb"} <= set(row)


def test_remembered_sha256_follows_each_version_of_the_file(tmp_path: Path) -> None:
    """Hashed once per version: the same answer as sha256_file, and a replaced or grown file is hashed again."""
    path = tmp_path / "base.pt"
    path.write_bytes(b"a" * 1000)
    first = weights.sha256_file_remembered(path)
    assert first == weights.sha256_file(path) == weights.sha256_file_remembered(tmp_path / "." / "base.pt")
    replacement = tmp_path / "new.pt"
    replacement.write_bytes(b"b" * 1000)  # same size, another inode
    os.replace(replacement, path)
    assert weights.sha256_file_remembered(path) == weights.sha256_file(path) != first
    with open(path, "ab") as fh:
        fh.write(b"c")
    assert weights.sha256_file_remembered(path) == weights.sha256_file(path)
