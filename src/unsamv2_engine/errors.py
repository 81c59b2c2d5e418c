"""One error hierarchy for every user mistake the engine can name (standard library only).

Only an :class:`UnSAMv2Error` is a *user error*: the command line prints it as one
``unsamv2: error: ...`` line (exit code 2) and the engine service replies with it as such.
Anything else is a bug and keeps its traceback (``--traceback`` shows the trace of user errors too).

Each subclass also derives from the built-in type the code raised before (``ValueError``,
``RuntimeError``), so code that catches those keeps working.

=====================  =================================================================
class                  raised for
=====================  =================================================================
PromptError            points, labels, granularity, threshold the engine cannot use
ImageError             an image file or array that cannot be segmented (unreadable, wrong shape, uniform)
InputError             another input: an option value, a data file (pseudo-labels, datasets)
CheckpointError        a checkpoint or adapter file that cannot be used
WeightsError           a registry model that cannot be found, fetched or verified
OutputError            an output that cannot or must not be written (an input, a directory, read-only)
CancelledError         a long job stopped on request
EngineError            the engine process died or a request reached it in the wrong state
=====================  =================================================================
"""

from __future__ import annotations

__all__ = ["CancelledError", "CheckpointError", "DeviceError", "EngineError", "ImageError", "InputError", "OutputError",
           "PromptError", "UnSAMv2Error", "WeightsError", "is_user_error", "user_error_message"]


class UnSAMv2Error(Exception):
    """A mistake of the user or of their files; the message says what is wrong and what to do."""


class PromptError(UnSAMv2Error, ValueError):
    """A prompt (points, labels, granularity, mask threshold) the engine cannot use, and why."""


class ImageError(UnSAMv2Error, ValueError):
    """An image that cannot be read or segmented (wrong file, shape, frame, or no contrast)."""


class InputError(UnSAMv2Error, ValueError):
    """An option value or input data file the command cannot use."""


class DeviceError(UnSAMv2Error, RuntimeError):
    """A device that was asked for but is not available here (no CUDA, no MPS)."""


class CheckpointError(UnSAMv2Error, RuntimeError):
    """A checkpoint or adapter file that cannot be used, with what to do about it."""


class WeightsError(UnSAMv2Error, RuntimeError):
    """A registry model that cannot be found, fetched or verified."""


class OutputError(UnSAMv2Error, ValueError):
    """An output path that cannot or must not be written (it is an input, a directory, not writable)."""


class CancelledError(UnSAMv2Error, RuntimeError):
    """A long job was cancelled on request."""


class EngineError(UnSAMv2Error, RuntimeError):
    """The engine cannot answer: its process died, or it lacks the state a request needs."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user error (shown as one line) rather than a bug (shown with its traceback).

    User errors are :class:`UnSAMv2Error` and operating-system errors about the user's files (no
    such file, a directory where a file was expected, permission denied, or any OS error naming a
    file, such as a full disk): those are about the user's files, not about the code.
    """
    if isinstance(exc, UnSAMv2Error):
        return True
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)):
        return True
    return isinstance(exc, OSError) and getattr(exc, "filename", None) is not None and bool(exc.strerror)


def user_error_message(exc: BaseException) -> str | None:
    """Return the one-line message of a user error, or None for a bug (which keeps its traceback).

    User errors are :class:`~unsamv2_engine.errors.UnSAMv2Error` (and OS errors about a named file:
    no such file, permission denied, disk full), classified as the engine service does; running out
    of device memory is reported too. Any other exception is a bug.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return f"out of device memory ({str(exc).splitlines()[0]}); try a smaller image or --device cpu"
    if not is_user_error(exc):
        return None
    if isinstance(exc, OSError) and not isinstance(exc, UnSAMv2Error) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__
