"""The one way narrate writes a local file: readers see the old file or the new one, never a part.

The data goes to a temporary file in the same folder (same file system, so the rename is
atomic), is flushed to disk, and is renamed over the target. The temporary file is created with
mode 0666 less the umask, like any new file, so the result is readable as the umask says (a
`tempfile` file would be 0600).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


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
