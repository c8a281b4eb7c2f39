"""Any error as the one line a user reads: what is wrong and what to do.

The command line prints it after ``error:`` and the Processing algorithms raise it as a
``QgsProcessingException``; the traceback goes to the log (``logging``, debug level), never to
the user. The core's own errors (``ValueError`` subclasses: ``StackError``, ``ModelFileError``,
``PredictError`` ...) already say what to do; this adds the same for the operating system's
errors, running out of memory, and bugs.
"""

from __future__ import annotations

import errno

MEMORY_ADVICE = (
    "lower the memory budget (--memory-mb, or the algorithm's memory budget) or the batch "
    "size (--batch-size), or close other programs"
)


def one_line(text: str) -> str:
    """``text`` with its lines joined: a message is printed (and matched) as one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def os_error_message(exc: OSError) -> str:
    """An ``OSError`` as what happened to which file, and what to do about it."""
    path = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "choose a file or folder you may read and write (or change its permissions)"
    elif isinstance(exc, FileNotFoundError):
        advice = "check the path; an output's folder must exist"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some disk space or choose an output on another disk"
    elif isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
        advice = "choose another path"
    else:
        advice = "check the path and the disk"
    return f"cannot use {path}: {reason}; {advice}"


def user_message(exc: BaseException) -> str:
    """One line saying what went wrong and what to do (without the ``error:`` prefix)."""
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()  # torch's OOM
    ):
        detail = f" ({one_line(str(exc))})" if str(exc) else ""
        return f"out of memory{detail}: {MEMORY_ADVICE}"
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if isinstance(exc, ValueError):
        return one_line(str(exc)) or type(exc).__name__
    text = one_line(str(exc))
    return (
        f"unexpected {type(exc).__name__}{': ' + text if text else ''} (a bug: please report it "
        "with the traceback that --verbose prints, or the log)"
    )


__all__ = ["MEMORY_ADVICE", "one_line", "os_error_message", "user_message"]
