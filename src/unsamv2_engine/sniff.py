"""What is this file? Recognise what people give as a checkpoint by mistake, before ``torch.load``.

Standard library only (the weights downloader uses it too). :func:`sniff` reads the first bytes
(and, for a zip, its central directory) and names the file's kind; :func:`not_a_checkpoint` turns a
kind into a message that says what the file is and what to do, never to delete a user's image.

Kinds: ``"torch-zip"`` (a complete zip: what ``torch.save`` writes), ``"torch-legacy"`` (a pickle),
``"truncated-zip"``, ``"empty"``, ``"html"``, ``"git-lfs"``, ``"tiff"``, ``"png"``, ``"jpeg"``,
``"text"``, ``"unknown"`` (other bytes).
"""

from __future__ import annotations

import os
import zipfile

__all__ = ["CHECKPOINT_KINDS", "IMAGE_KINDS", "describe_kind", "not_a_checkpoint", "sniff"]

CHECKPOINT_KINDS = ("torch-zip", "torch-legacy")
IMAGE_KINDS = {"tiff": "TIFF", "png": "PNG", "jpeg": "JPEG"}
_HEAD = 512


def sniff(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """``(kind, first bytes)`` of the file at ``path`` (see the module docstring for the kinds)."""
    with open(path, "rb") as fh:
        head = fh.read(_HEAD)
    if not head:
        return "empty", head
    if head[:2] == b"PK":
        try:
            ok = zipfile.is_zipfile(path)
        except OSError:
            ok = False
        return ("torch-zip" if ok else "truncated-zip"), head
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:  # pickle protocol 2..5
        return "torch-legacy", head
    if head.startswith(b"version https://git-lfs"):
        return "git-lfs", head
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff", head
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", head
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg", head
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<!--", b"<body", b"<")):
        return "html", head
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "text", head
    return "unknown", head


def describe_kind(kind: str, head: bytes) -> str:
    """A few words on what the file is, for messages."""
    if kind in IMAGE_KINDS:
        return f"an image file ({IMAGE_KINDS[kind]})"
    if kind == "html":
        return "a web page (HTML), not the file itself: the download saved the page that links to it"
    if kind == "git-lfs":
        return ("a git-lfs pointer (a small text file standing in for the real file): the repository was cloned "
                "without 'git lfs pull'")
    if kind == "text":
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:60] if head.strip() else ""
        return f"a text file (it starts with {first!r})"
    if kind == "truncated-zip":
        return "a truncated or damaged zip archive (an interrupted download or copy)"
    if kind == "empty":
        return "an empty file (0 bytes)"
    if kind == "unknown":
        return f"data of an unknown format (it starts with the bytes {head[:8]!r})"
    return "a PyTorch file"


def not_a_checkpoint(path: str | os.PathLike[str], kind: str, head: bytes, *, role: str = "checkpoint",
                     option: str = "--checkpoint", registry_name: str | None = None) -> str:
    """The message for a file given as a checkpoint (``role``: checkpoint or adapter) that is not one."""
    what = describe_kind(kind, head)
    size = os.path.getsize(path)
    base = f"{path} ({size:,} bytes) is {what}, not a PyTorch {role} file."
    if kind in IMAGE_KINDS:
        return (f"{base} Give the image as IMAGE and a SAM 2.1 / UnSAMv2 .pt file as {option}"
                if role == "checkpoint" else f"{base} Give the adapter .pt file written by 'unsamv2 finetune' "
                                             f"or 'unsamv2 convert --to adapter' as {option}")
    if registry_name is not None:
        return (f"{base} It is the cached file of model '{registry_name}': delete it and download it again "
                f"(unsamv2 models --download {registry_name} --force)")
    if kind == "git-lfs":
        return f"{base} Run 'git lfs pull' in its repository, or download the real file, and pass it as {option}"
    if kind == "html":
        return f"{base} Download the file itself (in a browser if needed) and pass it as {option}"
    if kind in ("truncated-zip", "empty"):
        return f"{base} Copy or download it again completely, then pass it as {option}"
    hint = ("a SAM 2.1, UnSAMv2 or UnSAMv2+ checkpoint (.pt)" if role == "checkpoint"
            else "an adapter file written by 'unsamv2 finetune' or 'unsamv2 convert --to adapter'")
    return f"{base} Pass {hint} as {option}"
