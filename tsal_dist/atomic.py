"""Atomic file writes: a file is complete or absent, never half-written.

Every file the package writes goes through here. The content goes to a temporary file in the
target's own folder (same file system, so the rename is atomic), which is renamed over the target
when the write succeeded and removed when it failed. Temporary names are
``.<name>.<random>.tmp``, or ``.<name>.<random>.tmp<ext>`` for writers that choose the format by
the file name; :func:`is_temp_name` recognises both, and a resumed run deletes the ones that a
killed write left behind (``tsal_dist.loop.runs.remove_stale_temp_files``).

What does not belong here: what is written (formats, checkpoints, plots, exports) and where.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Permission bits a temporary file is created with; the umask applies to both, as usual. PLAIN
# is the default: run folders, lists and results on shared storage are read by colleagues.
PRIVATE = 0o600  # as tempfile.mkstemp makes files (owner only)
PLAIN = 0o666  # as open() makes files

_TEMP_NAME = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary file that :func:`atomic_path` makes."""
    return bool(_TEMP_NAME.match(name))


def _make_temp(path: Path, ext: str, make: Callable[[Path], Any]) -> tuple[Any, Path]:
    """``make(tmp)`` at the first free temporary name ``tmp`` next to ``path`` (``make`` raises
    FileExistsError for a name that is taken); its result and the name."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{ext}")
        try:
            return make(tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temporary file name next to it")


def _create_temp(path: Path, ext: str, mode: int) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return _make_temp(path, ext, lambda tmp: os.open(tmp, flags, mode))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, ext: str = "", fsync: bool = False,
                mode: int = PLAIN) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name (torch.save,
    ``np.savez``, ``Figure.savefig``, ``cv2.VideoWriter``); rename it over ``path`` when the block
    ends normally, remove it when the block raises.

    A symbolic link is written through (its target is replaced, the link stays); a device, a
    pipe or a folder at ``path`` is refused (a rename would replace the node itself, as root even
    ``/dev/stdout``) with an OSError naming it.

    Args:
        path: the file to write; missing parent folders are created.
        ext: appended to the temporary name (``.tmp<ext>``), for writers that pick the format or
            add an extension by the file name (``np.savez`` appends ``.npz`` to other names).
        fsync: flush the file to disk before the rename, so that after a crash the name never
            points at data that did not reach the disk (checkpoints).
        mode: permission bits the temporary file is created with (:data:`PLAIN`, as ``open``
            makes files, or :data:`PRIVATE`; before the umask); the renamed file keeps them.
    """
    p = Path(path)
    if p.is_symlink():
        p = p.resolve()
    if p.exists() and not p.is_file():
        raise OSError(errno.EEXIST, "exists and is not a regular file", str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(p, ext, mode)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False,
                       mode: int = PLAIN) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path` for the arguments)."""
    with atomic_path(path, fsync=fsync, mode=mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False,
                      mode: int = PLAIN) -> None:
    """Write ``text`` (the locale's encoding, as ``open``) to ``path`` atomically."""
    with atomic_path(path, fsync=fsync, mode=mode) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
                      allow_nan: bool = True, default: Callable[[Any], Any] | None = None,
                      final_newline: bool = True, fsync: bool = False,
                      mode: int = PLAIN) -> None:
    """``json.dumps(obj, indent=, allow_nan=, default=)`` (plus a newline) to ``path``
    atomically. ``allow_nan=False`` makes NaN/Infinity a ValueError (strict JSON) before the
    file is touched."""
    text = json.dumps(obj, indent=indent, allow_nan=allow_nan, default=default)
    atomic_write_text(path, text + ("\n" if final_newline else ""), fsync=fsync, mode=mode)


def atomic_symlink(link: str | os.PathLike[str], target: str, *, is_dir: bool = False) -> None:
    """Make ``link`` a symbolic link to ``target``, replacing what is there (a link, a file)
    atomically: the link is made under a temporary name beside it and renamed over it, so the
    name always resolves to the old or the new target. OSError where links are not allowed."""
    p = Path(link)
    p.parent.mkdir(parents=True, exist_ok=True)
    _, tmp = _make_temp(p, "", lambda t: os.symlink(target, t, target_is_directory=is_dir))
    try:
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
