"""Registry of known model weights, with a cache and download on request.

This module only uses the standard library and ``tqdm``: it must stay cheap to import
(the ``unsamv2`` CLI imports it for ``--help``), so it never imports torch, sam2, napari
or Qt. Nothing is downloaded at import time; :func:`download` is the only function that
touches the network, and only when asked to.

Where files live
    :func:`cache_dir` is ``$UNSAMV2_CACHE`` if set, else ``$XDG_CACHE_HOME/unsamv2``,
    else ``~/.cache/unsamv2``. Each entry is stored there under its ``filename``.

Mirrors
    If ``$UNSAMV2_WEIGHTS_MIRROR`` is set, files are fetched from
    ``<mirror>/<filename>`` instead of their upstream URL (for labs with an internal
    mirror, and for tests that serve files locally).

A download is written to ``<filename>.part``, checked (length, content type, byte size and
SHA-256 where published, checkpoint magic bytes) and only then renamed atomically to its final
name, so an interrupted or bad download never leaves a corrupt file in the cache.

Verification
    Every entry whose digest is published pins its byte size and SHA-256 (the official SAM 2.1
    digests and the UnSAMv2+ digest). A cached file is verified when it is first used in a process:
    its size always, its full hash once; the verified digest is then remembered beside the file in
    ``<filename>.sha256`` (JSON with the size and modification time it was computed for), so later
    processes only compare size and time. For an entry with no published digest (plain UnSAMv2),
    the digest of the first download is recorded there and later uses are checked against it;
    ``unsamv2 models`` says which digests are published and which recorded.

Why this downloader and not ``pooch`` or ``huggingface_hub``
    Both verify hashes, but neither fits all our sources: plain UnSAMv2 is only on Google Drive
    (confirmation pages; neither handles them without a custom downloader), SAM 2.1's canonical
    source is Meta's CDN, and the CLI imports this module for ``--help``, which must stay
    standard-library only. The hand-written downloader is about 300 lines, already has the GUI's
    byte-progress callback, the mirror variable and local-server tests; pinning size + SHA-256 and
    the sidecar record is what it lacked.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # urllib / http.client are imported lazily: they cost ~40 ms
    import http.client

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "ChecksumMismatchError",
    "IncompleteDownloadError",
    "ModelEntry",
    "OfflineError",
    "UnknownModelError",
    "WeightsError",
    "WeightsNotFoundError",
    "cache_dir",
    "cached_path",
    "download",
    "download_url",
    "get_entry",
    "list_models",
    "record_path",
    "resolve_checkpoint",
    "sha256_file",
    "sha256_file_remembered",
    "verify_file",
]

ProgressCallback = Callable[[int, int | None], None]

CACHE_ENV = "UNSAMV2_CACHE"
MIRROR_ENV = "UNSAMV2_WEIGHTS_MIRROR"
_CHUNK = 1 << 20  # bytes read per network / disk chunk
_USER_AGENT = "napari-unsamv2 (weights downloader; python urllib)"


# --------------------------------------------------------------------------- errors


from unsamv2_engine.errors import WeightsError  # noqa: E402 - re-exported: weights.WeightsError


class UnknownModelError(WeightsError, KeyError):
    """The name is not in :data:`REGISTRY`."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(WeightsError):
    """A registry model is not in the cache and downloading was not requested."""


class ChecksumMismatchError(WeightsError):
    """A file's SHA-256 differs from the one recorded in the registry."""


class IncompleteDownloadError(WeightsError):
    """The server sent fewer bytes than announced, or the transfer was cut off."""


class OfflineError(WeightsError):
    """The download server could not be reached (no network, DNS failure, timeout...)."""


# ------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelEntry:
    """One known checkpoint.

    Attributes
    ----------
        name: registry key, e.g. ``"sam2.1-tiny"``.
        family: ``"sam2.1"`` (plain SAM 2.1) or ``"unsamv2"`` (SAM 2.1 + granularity).
        size: Hiera backbone size: ``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"``.
        filename: file name in the cache (and on a mirror).
        url: upstream download URL.
        sha256: published SHA-256 hex digest, or ``None`` when none is published (the digest of the
            first download is then recorded beside the file).
        size_bytes: published byte size, or ``None`` when not known.
        approx_mb: approximate file size in MB, for display only.
        description: one line for humans.
        licence: licence of the weights (SPDX id or a pointer).
    """

    name: str
    family: str
    size: str
    filename: str
    url: str
    sha256: str | None
    approx_mb: int | None
    description: str
    licence: str
    size_bytes: int | None = None


_SAM21_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_UNSAMV2_LICENCE = "see https://github.com/yujunwei04/UnSAMv2 (no licence file published)"


def _gdrive_url(file_id: str) -> str:
    """Direct-download URL of a public Google Drive file (skipping the virus-scan page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# Published digests (docs: ../shared WEIGHTS.md; Meta's CDN and the Hugging Face hub serve the same bytes).
_SAM21_PINS = {
    "tiny": (156008466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    "small": (184416285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    "base_plus": (323606802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    "large": (898083611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
}
# UnSAMv2+: the digest shown for unsamv2_plus_ckpt.pt in the authors' Hugging Face Space; no byte size published.
_UNSAMV2_PLUS_SHA256 = "4067a6966b06df984828f537da0f02389ff28655a8985a1e1f4a3e1de4077195"


def _sam21(size: str, approx_mb: int) -> ModelEntry:
    """Registry entry of an official Meta SAM 2.1 checkpoint."""
    filename = f"sam2.1_hiera_{size}.pt"
    return ModelEntry(
        name=f"sam2.1-{size.replace('_', '-')}",
        family="sam2.1",
        size=size,
        filename=filename,
        url=f"{_SAM21_BASE}/{filename}",
        sha256=_SAM21_PINS[size][1],
        approx_mb=approx_mb,
        description=f"Official Meta SAM 2.1 Hiera-{size} checkpoint (no granularity module)",
        licence="Apache-2.0",
        size_bytes=_SAM21_PINS[size][0],
    )


def _unsamv2(name: str, filename: str, drive_id: str, description: str, sha256: str | None = None) -> ModelEntry:
    """Registry entry of an UnSAMv2 checkpoint published on Google Drive."""
    return ModelEntry(
        name=name,
        family="unsamv2",
        size="small",
        filename=filename,
        url=_gdrive_url(drive_id),
        sha256=sha256,
        approx_mb=None,
        description=description,
        licence=_UNSAMV2_LICENCE,
    )


def _build_registry() -> dict[str, ModelEntry]:
    """All known checkpoints, keyed by name."""
    entries = [
        _sam21("tiny", 149),
        _sam21("small", 176),
        _sam21("base_plus", 309),
        _sam21("large", 857),
        _unsamv2(
            "unsamv2",
            "unsamv2_ckpt.pt",
            "1iYmYFeJxY4aI1lG5F2ZFL8tzzyGkCgX0",
            "UnSAMv2: SAM 2.1 Hiera-small + granularity module",
        ),
        _unsamv2(
            "unsamv2-plus",
            "unsamv2_plus_ckpt.pt",
            "1M56QN2CWfou7h5azxJvc_igmbQh9D2af",
            "UnSAMv2+: SAM 2.1 Hiera-small + granularity module (improved training)",
            sha256=_UNSAMV2_PLUS_SHA256,
        ),
    ]
    return {e.name: e for e in entries}


REGISTRY: dict[str, ModelEntry] = _build_registry()
"""Known checkpoints, keyed by name."""

DEFAULT_MODEL = "unsamv2-plus"
"""Name of the model used when none is given."""


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry called ``name``.

    Raises
    ------
        UnknownModelError: ``name`` is not a known model; the message lists known names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        pass
    known = ", ".join(REGISTRY)
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownModelError(f"unknown model '{name}'.{hint} Known models: {known}.")


# ---------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Directory holding downloaded weights (not created here).

    ``$UNSAMV2_CACHE`` if set, else ``$XDG_CACHE_HOME/unsamv2``, else ``~/.cache/unsamv2``.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "unsamv2"
    return Path.home() / ".cache" / "unsamv2"


def cached_path(name: str) -> Path:
    """Path where the file of model ``name`` lives in the cache (it may not exist)."""
    return cache_dir() / get_entry(name).filename


def download_url(name: str) -> str:
    """URL :func:`download` fetches model ``name`` from (honours ``$UNSAMV2_WEIGHTS_MIRROR``)."""
    entry = get_entry(name)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.filename}"
    return entry.url


def list_models() -> list[dict[str, Any]]:
    """One dict per registry entry, for ``unsamv2 models`` (cheap: no file is hashed here).

    Keys: ``name``, ``family``, ``size``, ``approx_mb``, ``cached`` (bool: the file is there, with
    the published size where one is known), ``path`` (str, the cache location), ``url``,
    ``description``, ``licence``, ``sha256`` (the published digest, else the recorded one, else
    None), ``digest`` (``"published"``, ``"recorded"``: none is published and this one was recorded
    at the first download, or ``"none yet"``), ``size_ok`` (False when a cached file has the wrong size).
    """
    rows = []
    for entry in REGISTRY.values():
        path = cached_path(entry.name)
        present = path.is_file()
        size_ok = not present or entry.size_bytes is None or path.stat().st_size == entry.size_bytes
        record = _read_record(path) if present and not entry.sha256 else None
        digest = "published" if entry.sha256 else ("recorded" if record else "none yet")
        rows.append(
            {
                "name": entry.name,
                "family": entry.family,
                "size": entry.size,
                "approx_mb": entry.approx_mb,
                "cached": present and size_ok,
                "path": str(path),
                "url": entry.url,
                "description": entry.description,
                "licence": entry.licence,
                "sha256": entry.sha256 or (record or {}).get("sha256"),
                "digest": digest,
                "size_ok": size_ok,
            }
        )
    return rows


# ------------------------------------------------------------------------- checking


def sha256_file(path: str | os.PathLike[str], chunk: int = _CHUNK) -> str:
    """SHA-256 hex digest of a file, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)


def sha256_file_remembered(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, computed once per process for each version of the file.

    A version is the resolved path with its size, modification time (ns) and inode: a file rewritten in
    place or replaced is hashed again. For the base hash that every adapter load checks (the widget loads
    adapters on the same base model again and again; a large base takes seconds to hash). The same rule as
    :func:`verify_file`'s in-process memo (``_VERIFIED``), plus the inode, and without a digest record
    beside the file: a base model is a user's file, not an entry of the weights cache.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    return _sha256_of_version(real, st.st_size, st.st_mtime_ns, st.st_ino)


def record_path(path: str | os.PathLike[str]) -> Path:
    """Where the verified digest of ``path`` is remembered: ``<file>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> dict[str, Any] | None:
    """The digest record of ``path`` (``sha256``, ``size``, ``mtime_ns``, ``source``), or None."""
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None


def _write_record(path: Path, sha256: str, source: str) -> None:
    """Remember the verified digest of ``path`` (silently skipped in a read-only cache)."""
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "source": source}
    target = record_path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


_VERIFIED: dict[str, tuple[int, int]] = {}
"""Files verified in this process: resolved path -> (size, mtime_ns) when it was verified."""


def _redownload_hint(entry: ModelEntry) -> str:
    return (f"Replace it: 'unsamv2 models --download {entry.name} --force' downloads it again (or delete it and "
            f"place the right file there, or pass --checkpoint PATH).")


def _check_size(path: Path, entry: ModelEntry) -> None:
    """Refuse a file whose byte size differs from the published one."""
    size = path.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise ChecksumMismatchError(
            f"{path} has {size:,} bytes but model '{entry.name}' has {entry.size_bytes:,}: the file is "
            f"{'truncated' if size < entry.size_bytes else 'not the right one'}. {_redownload_hint(entry)}"
        )


def verify_file(path: str | os.PathLike[str], entry: ModelEntry) -> str:
    """Check a cached file of ``entry``: its size always, its SHA-256 once (then remembered).

    The full hash is computed the first time the file is used in a process, unless its digest
    record (:func:`record_path`) matches its current size and modification time. Against a
    published digest, or, when none is published, against the digest recorded at the first
    download (recorded now if there is none yet).

    Returns
    -------
        ``"published"`` (matches the published digest) or ``"recorded"`` (matches, or now is,
        the recorded digest of an entry with none published).

    Raises
    ------
        ChecksumMismatchError: wrong size or digest; the message says what to do.
    """
    path = Path(path)
    _check_size(path, entry)
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns)
    source = "published" if entry.sha256 else "recorded"
    key = str(path.resolve())
    if _VERIFIED.get(key) == stamp:
        return source
    record = _read_record(path)
    expected = entry.sha256.lower() if entry.sha256 else (record or {}).get("sha256")
    if record and expected and record.get("sha256") == expected and \
            (record.get("size"), record.get("mtime_ns")) == stamp:
        _VERIFIED[key] = stamp
        return source
    actual = sha256_file(path)
    if expected and actual != expected:
        origin = "published" if entry.sha256 else "recorded when it was first downloaded"
        raise ChecksumMismatchError(
            f"checksum mismatch for {path} (model '{entry.name}'): expected sha256 {expected} ({origin}), "
            f"got {actual}. The file is corrupt or not the right one. {_redownload_hint(entry)}"
        )
    _write_record(path, actual, source)
    _VERIFIED[key] = stamp
    return source


def _check_download(part: Path, entry: ModelEntry, url: str) -> str:
    """Size and SHA-256 of a fresh download against the published ones; returns its digest."""
    size = part.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise ChecksumMismatchError(
            f"{url} sent {size:,} bytes but model '{entry.name}' has {entry.size_bytes:,}: "
            f"{'a truncated' if size < entry.size_bytes else 'another'} file (a bad mirror or an interrupted "
            f"transfer). Nothing was cached; run the download again, or check the mirror."
        )
    actual = sha256_file(part)
    if entry.sha256 and actual != entry.sha256.lower():
        raise ChecksumMismatchError(
            f"checksum mismatch for the download of model '{entry.name}' from {url}: expected sha256 "
            f"{entry.sha256.lower()}, got {actual}. Nothing was cached; run the download again, or check "
            f"the mirror."
        )
    return actual


def _check_magic(path: Path, entry: ModelEntry, url: str, final: Path) -> None:
    """Raise unless ``path`` looks like a torch checkpoint (zip, or legacy pickle)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return
    if head.lstrip()[:1] == b"<":
        raise WeightsError(_html_message(entry, url, final))
    raise WeightsError(
        f"{url} did not return a PyTorch checkpoint (the file starts with {head[:8]!r}, "
        f"not a zip or pickle header): not a PyTorch checkpoint. Check the URL or "
        f"mirror, or download '{entry.filename}' yourself and pass --checkpoint PATH."
    )


def _html_message(entry: ModelEntry, url: str, final: Path) -> str:
    """Explain that an HTML page arrived instead of the checkpoint."""
    return (
        f"{url} returned an HTML page instead of a checkpoint (Google Drive shows one "
        f"when its download quota is exceeded or it wants a confirmation). Download "
        f"the file in a browser from {entry.url} and place it at {final}, "
        f"or pass --checkpoint PATH."
    )


def _offline_message(url: str, reason: object, final: Path) -> str:
    """Message of :class:`OfflineError`."""
    return (
        f"no network: could not reach {url} ({reason}). "
        f"Place the file at {final} or pass --checkpoint PATH."
    )


# ------------------------------------------------------------------------- download


def _open(url: str, timeout: float, final: Path) -> http.client.HTTPResponse:
    """Open ``url``, mapping connection failures to :class:`OfflineError`."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as err:
        err.close()
        raise WeightsError(
            f"download failed: {url} answered HTTP {err.code} ({err.reason}). "
            f"Place the file at {final} or pass --checkpoint PATH."
        ) from err
    except urllib.error.URLError as err:
        raise OfflineError(_offline_message(url, err.reason, final)) from err
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise OfflineError(_offline_message(url, str(err) or type(err).__name__, final)) from err


def _content_length(response: http.client.HTTPResponse) -> int | None:
    """Announced body size, or ``None`` when absent or unparsable."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _stream(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    total: int | None,
    label: str,
    progress: bool,
    progress_callback: ProgressCallback | None,
) -> int:
    """Copy the response body to ``out``; return the number of bytes written."""
    from tqdm import tqdm  # local: keeps module import minimal

    done = 0
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        file=sys.stderr,
        disable=not progress,
        leave=False,
    ) as bar:
        while True:
            block = response.read(_CHUNK)
            if not block:
                break
            out.write(block)
            done += len(block)
            bar.update(len(block))
            if progress_callback is not None:
                progress_callback(done, total)
    return done


def _fetch_to(
    part: Path,
    url: str,
    entry: ModelEntry,
    final: Path,
    *,
    timeout: float,
    progress: bool,
    progress_callback: ProgressCallback | None,
) -> str:
    """Download ``url`` into ``part`` and run every check on it (raises on failure); returns its SHA-256."""
    import http.client

    response = _open(url, timeout, final)
    with response:
        if response.headers.get_content_type() == "text/html":
            raise WeightsError(_html_message(entry, url, final))
        total = _content_length(response)
        with open(part, "wb") as out:
            try:
                done = _stream(response, out, total, entry.filename, progress, progress_callback)
            except http.client.IncompleteRead as err:
                raise IncompleteDownloadError(
                    f"download of {url} was cut off: the server closed the connection "
                    f"with {err.expected} bytes still missing. Run the download again."
                ) from err
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                raise IncompleteDownloadError(
                    f"download of {url} was interrupted ({err}). Run the download again, "
                    f"or place the file at {final} or pass --checkpoint PATH."
                ) from err
    if total is not None and done != total:
        raise IncompleteDownloadError(
            f"download of {url} is incomplete: received {done} of {total} bytes. "
            f"Run the download again."
        )
    _check_magic(part, entry, url, final)
    return _check_download(part, entry, url)


def download(
    name: str,
    *,
    dest_dir: Path | None = None,
    progress: bool = True,
    progress_callback: ProgressCallback | None = None,
    force: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download model ``name`` into ``dest_dir`` (default: :func:`cache_dir`) and return its path.

    If the file is already there and ``force`` is false, it is verified (:func:`verify_file`)
    and returned without touching the network; a cached file that fails verification is
    downloaded again (a message on stderr says so). The digest of the new file is recorded
    beside it (:func:`record_path`).

    Parameters
    ----------
    name
        registry name (see :data:`REGISTRY`).
    dest_dir
        target directory, created if needed.
    progress
        show a tqdm progress bar on stderr.
    progress_callback
        called as ``callback(done_bytes, total_bytes_or_None)`` after
        every chunk (the GUI uses it). An exception raised by the callback cancels
        the download (the partial file is removed) and propagates.
    force
        download again even if the file exists.
    timeout
        socket timeout in seconds.

    Raises
    ------
        UnknownModelError: ``name`` is not a known model.
        OfflineError: the server could not be reached.
        IncompleteDownloadError: the transfer ended early.
        ChecksumMismatchError: the file's SHA-256 is wrong.
        WeightsError: an HTML page or a non-checkpoint file arrived, or an HTTP error.
    """
    entry = get_entry(name)
    directory = Path(dest_dir) if dest_dir is not None else cache_dir()
    final = directory / entry.filename
    if final.is_file() and not force:
        try:
            verify_file(final, entry)
            return final
        except ChecksumMismatchError as exc:
            print(f"unsamv2: the cached file is bad, downloading it again: {exc}", file=sys.stderr, flush=True)

    url = download_url(name)
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f"{entry.filename}.part"
    try:
        digest = _fetch_to(
            part,
            url,
            entry,
            final,
            timeout=timeout,
            progress=progress,
            progress_callback=progress_callback,
        )
        os.replace(part, final)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    _write_record(final, digest, "published" if entry.sha256 else "recorded")
    _VERIFIED[str(final.resolve())] = (final.stat().st_size, final.stat().st_mtime_ns)
    return final


# -------------------------------------------------------------------------- resolve


def _looks_like_path(text: str) -> bool:
    """Whether a string that is neither a file nor a model name was meant as a path."""
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(s in text for s in seps) or text.startswith("~") or Path(text).suffix != ""


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    download_missing: bool = False,
    progress: bool = True,
    progress_callback: ProgressCallback | None = None,
) -> Path:
    """Turn a model name or a checkpoint path into the path of a local file.

    * An existing file is returned as is (local paths are always accepted).
    * A registry name gives the cached file (verified); if it is not cached it is
      downloaded when ``download_missing`` is true.

    Raises
    ------
        FileNotFoundError: a path that does not exist (and is not a model name).
        WeightsNotFoundError: a model that is not cached, with ``download_missing`` false.
        UnknownModelError: a bare word that is neither a file nor a known model.
        WeightsError: see :func:`download`.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in REGISTRY:
        return _resolve_name(text, download_missing, progress, progress_callback)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file.")
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(
            f"checkpoint file not found: {path}. Give an existing .pt file, or one of "
            f"the model names: {', '.join(REGISTRY)}."
        )
    get_entry(text)  # raises UnknownModelError with the list of names
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve_name(
    name: str,
    download_missing: bool,
    progress: bool,
    progress_callback: ProgressCallback | None,
) -> Path:
    """Cached (verified) file of a registry model, downloading it when allowed."""
    entry = get_entry(name)
    final = cached_path(name)
    if final.is_file():
        try:
            verify_file(final, entry)
            return final
        except ChecksumMismatchError:
            if not download_missing:
                raise
        return download(name, progress=progress, progress_callback=progress_callback)  # replaces the bad file
    if download_missing:
        return download(name, progress=progress, progress_callback=progress_callback)
    raise WeightsNotFoundError(
        f"model '{name}' is not in the cache. Run 'unsamv2 models --download {name}' "
        f"(needs network), or place the file at {final}, or pass --checkpoint PATH."
    )
