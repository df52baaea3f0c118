"""Writing files so that a crash, a full disk or Ctrl-C leaves the old file or the new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from condnet.errors import CondnetError

T = TypeVar("T")


def write_atomically(path: str | os.PathLike, write: Callable[[str], T]) -> T:
    """Call `write` on a temporary file beside `path`, sync it, then rename it to `path`;
    returns what `write` returned.

    A crash leaves either the previous file or the new one, never a partial one; the temporary
    file is removed on any exception, and is named ``.<name>.*.tmp`` (what a killed writer
    leaves behind).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CondnetError(f"cannot write {path}: no such folder {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        result = write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600: give it what open() would
        _fsync(tmp)  # the data on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return result


def _umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames and removals in `folder` durable (best effort: not every system can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# The first bytes that name what a file is.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9"  # torch.save's pre-zip format


def file_kind(path: str | os.PathLike) -> str:
    """What `path` holds, from its first bytes: ``torch`` (a torch.save zip or its older pickle
    format), ``safetensors``, ``onnx``, ``image``, ``zip`` (another archive), ``text`` or
    ``unknown``. Nothing in it is run or unpickled."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        return "torch" if b"data.pkl" in head or b"/version" in head else "zip"
    if head.startswith(TORCH_LEGACY_MAGIC):
        return "torch"
    if head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27:
        return "safetensors"
    if head[:1] == b"\x08" and (b"onnx" in head[:512] or b"pytorch" in head[:512]):
        return "onnx"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "text"
