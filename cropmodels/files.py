"""Small file helpers shared by the writers of model files, stores and reports."""

from __future__ import annotations

import os


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
