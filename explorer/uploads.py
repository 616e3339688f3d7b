"""The one door through which a photo reaches the explorer: :class:`PhotoGate`.

Every event that takes a photo gets it with ``preprocess=False``: as Gradio's file
payload ``{"path": ...}``, which Gradio vets only when it carries ``meta``. A raw API
call can therefore name *any* path. The gate accepts a photo only when

* the payload is a path string (or a dict holding one) of bounded length;
* the path, resolved (symlinks, ``..``), lies inside Gradio's upload folder, or is one
  of the bundled photos;
* what is opened (without following a final symlink, without blocking on a pipe) is a
  regular file, and the opened descriptor still resolves inside those places;
* it holds at most ``max_bytes`` bytes, read with that cap.

Anything else gets one message, :data:`UNUSABLE`, that says nothing about the path:
whether it exists, is a folder, a device or a pipe, or what type it has.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

UNUSABLE = "This photo cannot be used. Please upload it again (PNG or JPEG)."
"""The answer to every payload that is not an uploaded (or bundled) regular file."""

MAX_PATH_LENGTH = 4096


class PhotoRejected(ValueError):
    """A photo payload the gate refuses; ``str(error)`` is meant for the user."""


def gradio_upload_folder() -> str:
    """Gradio's upload folder as Gradio computes it (``GRADIO_TEMP_DIR`` or
    ``<tmp>/gradio``), read at each call since tests and Spaces set it by environment."""
    from gradio.utils import get_upload_folder  # lazy: keeps this module cheap to import

    return get_upload_folder()


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives, relative mix
        return False


class PhotoGate:
    """Checks photo payloads and reads the bytes of the accepted ones.

    Args:
        roots: folders whose files are accepted, or a callable giving them at each call
            (default: Gradio's upload folder).
        files: single files accepted wherever they are (the bundled photos).
        max_bytes: the largest file read; larger files are refused.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike] | Callable[[], Iterable[str | os.PathLike]] = (),
        files: Iterable[str | os.PathLike] = (),
        max_bytes: int = 25 * 1024 * 1024,
    ) -> None:
        self._roots = roots if callable(roots) else (lambda: roots)
        self.files = frozenset(os.path.realpath(f) for f in files)
        self.max_bytes = max_bytes

    def roots(self) -> list[str]:
        """The accepted folders, resolved."""
        return [os.path.realpath(r) for r in self._roots()]

    def allowed(self, path: str) -> bool:
        """Whether a resolved path is a bundled photo or lies inside an accepted folder."""
        return path in self.files or any(_inside(path, root) for root in self.roots())

    @staticmethod
    def path_of(photo: object) -> str | None:
        """The path a payload names, None for no photo; PhotoRejected for a malformed one."""
        if photo is None or photo == "" or photo == {}:
            return None
        if isinstance(photo, dict):
            photo = photo.get("path")
        if isinstance(photo, os.PathLike):
            photo = os.fspath(photo)
        if not isinstance(photo, str) or not photo or len(photo) > MAX_PATH_LENGTH:
            raise PhotoRejected(UNUSABLE)
        if "\x00" in photo:
            raise PhotoRejected(UNUSABLE)
        return photo

    def check(self, photo: object) -> str | None:
        """The resolved path of an accepted photo, from its name alone (None when there is
        no photo): a regular file inside the accepted places. Reads nothing; what
        :meth:`read` opens is checked again through its descriptor.

        Raises:
            PhotoRejected: the payload names anything else (a folder, a device, a URL,
                a file elsewhere, nothing that exists).
        """
        path = self.path_of(photo)
        if path is None:
            return None
        resolved = os.path.realpath(path)
        if not self.allowed(resolved):
            raise PhotoRejected(UNUSABLE)
        try:
            regular = stat.S_ISREG(os.stat(resolved).st_mode)
        except (OSError, ValueError) as error:
            raise PhotoRejected(UNUSABLE) from error
        if not regular:
            raise PhotoRejected(UNUSABLE)
        return resolved

    def read(self, photo: object) -> bytes | None:
        """The bytes of an accepted photo (None when there is no photo).

        Raises:
            PhotoRejected: the payload is not an accepted regular file, or too large.
        """
        resolved = self.check(photo)
        if resolved is None:
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(resolved, flags)
        except OSError as error:
            raise PhotoRejected(UNUSABLE) from error
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not self._still_allowed(fd):
                raise PhotoRejected(UNUSABLE)
            if info.st_size > self.max_bytes:
                raise PhotoRejected(self.too_large())
            data = self._read_capped(fd)
        finally:
            os.close(fd)
        return data

    def too_large(self) -> str:
        """The message for a file over ``max_bytes``."""
        megabytes = self.max_bytes / (1024 * 1024)
        return f"This file is larger than {megabytes:.3g} MB; please use a smaller one."

    def _still_allowed(self, fd: int) -> bool:
        """The opened file is where the check said (a swapped path component would show)."""
        link = f"/proc/self/fd/{fd}"
        try:
            opened = os.readlink(link)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):  # no /proc: trust the resolve
                return True
            return False
        return self.allowed(opened)

    def _read_capped(self, fd: int) -> bytes:
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, self.max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > self.max_bytes:  # the file grew after fstat
                raise PhotoRejected(self.too_large())


def default_gate(bundled: Iterable[Path], max_bytes: int) -> PhotoGate:
    """The app's gate: Gradio's upload folder plus the bundled photos."""
    return PhotoGate(lambda: [gradio_upload_folder()], bundled, max_bytes)
