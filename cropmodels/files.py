"""Small file helpers shared by the writers of model files, stores and reports."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # read it (os.umask has no getter) and put it back at once
    os.umask(mask)
    return mask


# Read once at import, not per file: os.umask changes the whole process for an instant.
_DEFAULT_MODE = 0o666 & ~_umask()


def publish_mode(path: str | os.PathLike[str]) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the usual permissions, as
    ``open()`` would, before it is renamed into place for users to share."""
    os.chmod(path, _DEFAULT_MODE)


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block ends
    normally, delete it otherwise. A reader (or a crash) never sees a half-written file: there
    is the old file, the new one, or none."""
    target = Path(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish_mode(tmp)  # after writing: a writer may have replaced the file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` in UTF-8, complete or not at all (:func:`atomic_output`)."""
    with atomic_output(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


class OutputError(ValueError):
    """An output cannot be written where it was asked for."""


def check_output_folder(path: str | os.PathLike[str]) -> None:
    """Refuse an output whose folder is missing or not writable, before the work, not after.

    Writability is tested by creating and removing a file: the only test that holds for every
    user (root included), file system (read-only mounts) and platform.
    """
    folder = Path(path).parent
    if not folder.is_dir():
        raise OutputError(
            f"The folder {folder} of the output does not exist; create it or choose another output."
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(
            f"Cannot write in the folder {folder} ({exc.strerror or exc}); choose an output in a "
            "folder you may write to."
        ) from exc
