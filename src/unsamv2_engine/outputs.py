"""Output safety for every command that writes files (standard library only).

Two tools, used by every writing command (``segment``, ``sweep``, ``auto``, ``hierarchy``,
``propagate``, ``convert``, ``finetune``, ``pseudo-label``, ``synth``, ``evaluate``):

* :func:`check_outputs` runs **before any work starts**. It refuses an output that names one of the
  command's inputs (the same path, a symlink to it or a hard link of it), two outputs that are the
  same file, an output that is an existing directory, and an output whose folder is not writable
  (or cannot be created: missing folders are created by the writers). Each refusal is an
  :class:`~unsamv2_engine.errors.OutputError` that says what to do.
* :func:`staged_outputs` writes every output of a run to a temporary file beside its final name,
  and moves them into place (``os.replace``, atomic on one file system) only when the whole run
  succeeded. A failing run leaves none of its outputs behind and no earlier file replaced.

Paths are ``str`` or ``os.PathLike``; ``None`` and ``"-"`` (standard output) are skipped everywhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from unsamv2_engine.errors import OutputError

__all__ = ["check_output_dir", "check_outputs", "staged_outputs", "StagedOutputs"]

_STDOUT = "-"


def _given(path: object) -> bool:
    return path is not None and os.fspath(path) not in ("", _STDOUT)  # type: ignore[arg-type]


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file or folder: equal real paths (symlinks followed) or, for
    existing files, the same inode on the same device (hard links).
    """
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies inside the existing folder ``folder`` (after resolving symlinks)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.isdir(root) and os.path.commonpath([real, root]) == root and real != root


def _check_folder(folder: Path, what: str, path: str) -> None:
    """The folder an output goes into must be a writable folder, or be creatable: its nearest existing
    ancestor must be a writable folder (writers create missing folders).
    """
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is a file, not a folder; choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: the folder {folder} is not writable; choose an output path in a "
                          "folder you can write to")


def check_outputs(outputs: Mapping[str, str | os.PathLike[str] | None],
                  inputs: Mapping[str, str | os.PathLike[str] | None] | None = None, *,
                  input_dirs: Mapping[str, str | os.PathLike[str] | None] | None = None,
                  folder_formats: tuple[str, ...] = (".zarr",)) -> None:
    """Refuse unsafe output files before any work starts.

    Parameters
    ----------
    outputs
        option name -> output *file* path, e.g. ``{"-o": "z.tif", "--json": "z.json"}``.
    inputs
        option name -> input file path (images, checkpoint, adapter, base...). A missing
        input is skipped (it is reported by the command's own check).
    input_dirs
        option name -> input folder; an output may not be that folder nor lie inside it
        (a folder of images or pseudo-labels that a later run would read as input).
    folder_formats
        suffixes of outputs that are folders by format (a zarr group): such an
        output may be an existing folder (it is rewritten).

    Raises
    ------
        OutputError: an output names an input or another output, is a folder, or its folder is not
            writable (or not creatable); the message names the option and says what to do.
    """
    given = [(name, os.fspath(path)) for name, path in outputs.items() if _given(path)]
    sources = [(name, os.fspath(path)) for name, path in (inputs or {}).items() if _given(path)]
    for i, (name, path) in enumerate(given):
        for other, src in sources:
            if same_file(path, src):
                raise OutputError(f"{name} {path} would overwrite the input {other} {src}; choose another "
                                  "output name (inputs are never replaced)")
        for other, folder in (input_dirs or {}).items():
            if _given(folder) and (same_file(path, folder) or _inside(path, folder)):  # type: ignore[arg-type]
                raise OutputError(f"{name} {path} lies in the input folder {other} {folder}; write it elsewhere")
        for other, earlier in given[:i]:
            if same_file(path, earlier):
                raise OutputError(f"{other} and {name} both name {path}; one command cannot write two outputs "
                                  "to one file: give them different names")
        target = Path(path)
        if target.is_dir() and target.suffix.lower() not in folder_formats:
            raise OutputError(f"{name} {path} is an existing folder; give a file name (e.g. {target / 'out'}"
                              f"{target.suffix or ''})")
        _check_folder(target.parent if str(target.parent) else Path("."), name, path)


def check_output_dir(name: str, path: str | os.PathLike[str],
                     inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
                     input_dirs: Mapping[str, str | os.PathLike[str] | None] | None = None) -> None:
    """Refuse an unsafe output *folder* before any work starts: it may exist (as a folder) or be
    created in an existing writable folder, and it may not be an input file or input folder.
    """
    target = Path(path)
    for other, src in {**(inputs or {}), **(input_dirs or {})}.items():
        if _given(src) and same_file(target, src):  # type: ignore[arg-type]
            raise OutputError(f"{name} {path} is also the input {other} {src}; write to another folder")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{name} {path} is a file; give a folder (it is created if needed)")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"{name} {path}: the folder is not writable; choose a folder you can write to")
        return
    _check_folder(target.parent, name, str(path))


def _temporary_name(final: Path) -> Path:
    """A hidden name beside ``final`` that keeps its suffix (writers choose the format by suffix)."""
    return final.with_name(f".{final.stem}.unsamv2-{os.getpid()}.partial{final.suffix}")


class StagedOutputs:
    """Temporary paths for a run's outputs; see :func:`staged_outputs`."""

    def __init__(self) -> None:
        self._staged: dict[str, Path] = {}  # final path -> temporary path

    def path(self, final: str | os.PathLike[str] | None) -> str | None:
        """Where to write the output ``final`` during the run (``None`` / ``"-"`` pass through)."""
        if not _given(final):
            return None if final is None else os.fspath(final)
        key = os.fspath(final)  # type: ignore[arg-type]
        if Path(key).suffix.lower() == ".zarr":  # a folder format: written in place
            return key
        if key not in self._staged:
            self._staged[key] = _temporary_name(Path(key))
        return str(self._staged[key])

    def _commit(self) -> None:
        for final, temp in self._staged.items():
            if temp.exists():
                os.replace(temp, final)

    def _discard(self) -> None:
        for temp in self._staged.values():
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Write a run's outputs all-or-nothing.

    >>> with staged_outputs() as out:
    ...     write_labels(out.path(args.output), mask)
    ...     write_json(out.path(args.json), meta)

    On success every staged file replaces its final name; on any exception all are removed (the
    files that were there before stay untouched) and an OS error about a temporary file becomes an
    :class:`~unsamv2_engine.errors.OutputError` naming the final path.
    """
    staged = StagedOutputs()
    try:
        yield staged
        staged._commit()
    except OSError as exc:
        staged._discard()
        failed = str(getattr(exc, "filename", "") or "")
        name = next((final for final, temp in staged._staged.items() if failed.startswith(str(temp))), None)
        if name is not None:
            raise OutputError(f"cannot write {name}: {exc.strerror or exc}; nothing was written") from exc
        raise
    except BaseException:
        staged._discard()
        raise
