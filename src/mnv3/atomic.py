"""Files and directories that appear whole: a per-target lock, and an atomic swap into place.

A build writes into ``.<name>.tmp-XXXX`` beside the target and then calls ``publish_dir``.
On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``, so the path holds the old model or
the new one at every instant; elsewhere the old directory is first moved aside (a moment with
nothing at the path, never a mixture). ``build_lock`` keeps two builds of the same target
from interleaving: the second one refuses at once with a clear message.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mnv3.errors import BuildError, UsageError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@contextlib.contextmanager
def build_lock(target: Path):
    """Hold ``.<name>.lock`` beside ``target`` (an flock: released even if we crash).

    The lock file is removed when the build ends, while still locked, so nothing is left beside
    the model (issue 13). A second builder that opened the file before the removal then holds
    a lock on a file no longer at the path; ``_lock`` sees that and tries the new file, so two
    builders never both believe they hold the lock. Only a SIGKILLed build leaves the file
    (the next build of that path removes it)."""
    lock_path = target.parent / f".{target.name}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; builds still publish atomically
        yield
        return
    f = _lock(fcntl, target, lock_path)
    with f:
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # first, while locked: see the docstring
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock(fcntl, target: Path, lock_path: Path):
    """The open, flocked lock file that is at ``lock_path`` now; BuildError when it is held."""
    for _ in range(100):  # each retry means another build ended meanwhile: rare
        try:
            f = open(lock_path, "a+")
        except OSError as e:  # read-only or not a folder: say so before any work is done
            raise UsageError(f"cannot write beside {target} (lock {lock_path}: "
                             f"{e.strerror or e}); choose a writable --output") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise BuildError(f"another build is writing {target} right now (lock {lock_path}); "
                             "wait for it to finish or build to another --output") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass  # its holder removed it as we locked: take the path's new file
        f.close()
    raise BuildError(f"could not take the lock {lock_path}: other builds of {target} keep "
                     "starting and ending; wait for them or build to another --output")


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), since
    ``os.umask`` can only be read by setting it, a moment in which other threads' files would
    get the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(path_or_fd, directory: bool = False) -> None:
    """Give a file made by mkstemp (0600) or a folder made by mkdtemp (0700) the mode a plain
    ``open(..., "w")`` / ``mkdir`` would have given it (0644 / 0755 under umask 022): they are
    renamed into place as results, reports, models (issue 13)."""
    mode = (0o777 if directory else 0o666) & ~current_umask()
    if isinstance(path_or_fd, int):
        os.fchmod(path_or_fd, mode)
    else:
        os.chmod(path_or_fd, mode)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False when unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def publish_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory to ``target``, replacing an old one atomically."""
    if not target.exists():
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old model
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write; it replaces ``path`` when the
    block ends without an exception, and is removed otherwise.

    ``suffix`` is the temporary file's ending: writers that pick the format from the name
    (matplotlib, Pillow) need the real one. Its mode is a plain file's (``normal_mode``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        try:
            normal_mode(fd)  # mkstemp's 0600 is for the temporary file, not for the result
        finally:
            os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C too: no half-written temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file so readers see the old content or the new, never half of it."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
