"""Write a file so that readers see either the old or the new content, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: Path, text: str | bytes | Iterable[str | bytes], *, new_file_mode: int = 0o600) -> None:
    """Write to a temporary file in the same folder, fsync it, and rename it over path.

    A symlink is followed: its target is replaced and the link stays a link. An existing file keeps its
    permission bits; a new one gets `new_file_mode` less the umask (0o600 by default: state files hold
    findings). Text is written as UTF-8; an iterable of strings or bytes is written piece by piece, so a large
    file is never held whole in memory (if the iterable raises, the old file stays as it was).
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None
    pieces: Iterable[bytes]
    if isinstance(text, bytes):
        pieces = (text,)
    elif isinstance(text, str):
        pieces = (text.encode("utf-8"),)
    else:
        pieces = (piece.encode("utf-8") if isinstance(piece, str) else piece for piece in text)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, new_file_mode)
    try:
        with os.fdopen(fd, "wb") as out:
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            for piece in pieces:
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
