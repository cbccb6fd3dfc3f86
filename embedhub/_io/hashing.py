"""The one file hasher of the library: the SHA-256 of a regular file, read in bounded chunks.

Saves, exports, the ONNX loader, fingerprints, embedding files and job shards all hash files with
:func:`sha256_file`, so a file is hashed once per process while it is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading

from embedhub.errors import ConfigError

#: bytes read at a time: a file of any size is hashed in bounded memory
CHUNK = 1 << 20
#: (path, device, inode, size, mtime_ns, ctime_ns) -> SHA-256: each file is hashed once per process while it is
#: unchanged (a rewrite, even of the same size, changes its ctime)
_HASHES: dict[tuple, str] = {}
_LOCK = threading.Lock()
#: the most digests kept (the cache is emptied when it grows past this)
_MAX_CACHED = 4096


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of the regular file at ``path``, read in 1 MiB chunks and hashed once per process
    while it is unchanged; a folder, FIFO or device is a :class:`ConfigError` (opened without blocking, so a
    FIFO with no writer does not hang).

    >>> import tempfile; from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file", file=str(path))
        key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with _LOCK:
            known = _HASHES.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    finally:
        os.close(fd)
    hexdigest = digest.hexdigest()
    with _LOCK:
        if len(_HASHES) > _MAX_CACHED:
            _HASHES.clear()
        _HASHES[key] = hexdigest
    return hexdigest  # not read back from the cache, which another thread may have just emptied
