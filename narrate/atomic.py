"""The one way narrate writes a local file: readers see the old file or the new one, never a part
(and the one way it opens an input file: regular files only, of a bounded size).

The data goes to a temporary file in the same folder (same file system, so the rename is
atomic), is flushed to disk, and is renamed over the target. The temporary file is created with
mode 0666 less the umask, like any new file, so the result is readable as the umask says (a
`tempfile` file would be 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, data: bytes | str, *, overwrite: bool = True) -> bool:
    """Write `data` (str: UTF-8) to `path`, creating its folder.

    With `overwrite=False` the file is only created if absent (atomic create-if-absent, for
    writers racing for the same name); returns False when it already existed.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())  # the rename must not land before the data
        if overwrite:
            os.replace(temp, path)
            return True
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def open_regular_file(path: str | Path, max_bytes: int) -> BinaryIO:
    """`path` opened for reading if it is a regular file of at most `max_bytes`: a FIFO would
    block forever and a device (/dev/zero) never ends, so both are refused as they are opened
    (O_NONBLOCK: opening a FIFO with no writer does not wait)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device)")
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{info.st_size:,} bytes, over the limit of {max_bytes:,}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
