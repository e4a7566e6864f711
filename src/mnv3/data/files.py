"""Opening user files safely, and quoting them in messages (issue 19).

Every user file mnv3 reads (images, label and synsets files, checkpoints, meta.json, compiled
models, result files) is opened through ``open_regular``:

* only a **regular file**, after following symlinks: a FIFO named ``fifo.jpg``, a socket, a
  device (``/dev/zero``) or a folder is refused with a message saying what it is. The file is
  opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so opening a
  FIFO cannot block, and a file swapped for a FIFO after a check is still caught;
* under a **size cap** that says what it is for (``MAX_BYTES``): a 50 GB file named ``.jpg`` or
  a label file that is really a disk image is refused before it is read.

The caller's error class is raised (DataError for images and label files, CheckpointError,
ModelError ...); ``mnv3 infer`` and calibration skip such an image and list it in skipped.txt
with the reason, or stop at it with ``--strict``.

**File names are bytes on Linux.** Python hands a name that is not valid UTF-8 (Latin-1
``café.JPEG`` = ``caf\\xe9.JPEG``) over as a str with surrogate escapes, which cannot be written
to a UTF-8 file. ``escape_name`` turns such a name into its *escaped name*, each undecodable
byte written as ``\\xNN`` (``caf\\xe9.JPEG``): that is how result files, skipped.txt, meta.json and
messages show it, and how a label file (UTF-8 text) names it.

**Quoting user content.** ``quote`` shows at most ``QUOTE_CHARS`` characters of a label line, a
file name or a JSON value and says how long the rest was: a 50 MB line in a label file makes a
one-line error, not 50 MB on the terminal.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Callable

from mnv3.data import deadline
from mnv3.errors import DataError, Mnv3Error

QUOTE_CHARS = 120

# Size caps, by what the file is for. Generous for real files, small enough that a wrong file
# is refused before it fills the memory (the largest ImageNet photo is ~15 MB; the label file of
# the 50,000 validation images ~1.5 MB; a MobileNetV3 checkpoint ~20 MB, an EfficientNet-B7 ~260).
MAX_BYTES = {
    "image": 256 << 20,
    "label file": 256 << 20,
    "synsets file": 64 << 20,
    "result file": 1 << 30,
    "meta.json": 16 << 20,
    "checkpoint": 16 << 30,
    "compiled model": 16 << 30,
}


def escape_name(name: str | os.PathLike) -> str:
    """A file name or path as text that is always valid UTF-8: undecodable bytes as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value`` (a str, or any JSON value), saying
    how many more there were: ``'aaaa...'... (49,999,880 more characters)``."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(escape_text(value))
        return f"{escape_text(value[:limit])!r}... ({len(value) - limit:,} more characters)"
    return clip(repr(value), limit)


def clip(text, limit: int = 4 * QUOTE_CHARS) -> str:
    """``text`` (e.g. an exception's message, which may quote user content) cut to ``limit``
    characters, saying how many more there were; escaped like ``escape_text``."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return escape_text(text)
    return f"{escape_text(text[:limit])}... ({len(text) - limit:,} more characters)"


def escape_text(text: str) -> str:
    """``text`` with each undecodable byte of a file name (a lone surrogate from
    surrogateescape) written as ``\\xNN``, like ``escape_name``; valid text is unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # another lone surrogate, not from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(path: str | os.PathLike) -> str:
    """A path for a message: escaped (``escape_name``) and at most a bounded prefix long."""
    text = escape_name(path)
    if len(text) <= 4 * QUOTE_CHARS:
        return text
    return f"{text[:4 * QUOTE_CHARS]}... ({len(text) - 4 * QUOTE_CHARS:,} more characters)"


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a regular file"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def problem(st: os.stat_result, what: str, max_bytes: int | None = None) -> str | None:
    """Why a file with stat ``st`` cannot be read as ``what`` (None when it can)."""
    if not stat.S_ISREG(st.st_mode):
        return f"is {file_kind(st.st_mode)}, not a regular file"
    cap = MAX_BYTES.get(what) if max_bytes is None else max_bytes
    if cap is not None and st.st_size > cap:
        return (f"is {_size(st.st_size)}, more than the {_size(cap)} {_article(what)} {what} may be "
                "(mnv3.data.files.MAX_BYTES)")
    return None


def open_regular(path: str | os.PathLike, what: str, error: type[Mnv3Error] = DataError,
                 max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file under ``what``'s size cap.

    Never blocks (O_NONBLOCK until the descriptor is checked); raises ``error`` saying what the
    file is otherwise: missing, a FIFO, socket, device or folder, or too large.
    """
    try:
        st = os.stat(path)  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise error(f"{what} {shown(path)} does not exist{broken}; check the path") from None
    except OSError as e:
        raise error(f"cannot read {what} {shown(path)}: {e.strerror or e}") from None
    why = problem(st, what, max_bytes)
    if why is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise error(f"cannot read {what} {shown(path)}: {e.strerror or e}") from None
        why = problem(os.fstat(fd), what, max_bytes)  # the file opened, not the one stat saw
        if why is None:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise error(f"{what} {shown(path)} {why}; {_remedy(what)}")


def _remedy(what: str) -> str:
    if what == "image":
        return "replace or remove the file"
    if what in ("meta.json", "compiled model"):
        return "rebuild the model with 'mnv3 build'"
    return f"pass the {what} itself"


def read_bytes(path: str | os.PathLike, what: str, error: type[Mnv3Error] = DataError,
               max_bytes: int | None = None) -> bytes:
    """The whole content of a regular file (``open_regular``'s checks; the cap also bounds a
    file that grows while it is read).

    Opened and read with a deadline (``mnv3.data.deadline``, ``MNV3_READ_TIMEOUT``): a file on a
    network mount that stopped answering raises ``error`` saying so instead of blocking forever.
    """
    return start_read(path, what, error, max_bytes)()


def start_read(path: str | os.PathLike, what: str, error: type[Mnv3Error] = DataError,
               max_bytes: int | None = None) -> Callable[[], bytes]:
    """``read_bytes`` in two steps: the read starts now on a reader thread, and the returned
    function (call it once) waits for its bytes with the deadline, raising what ``read_bytes``
    would. The image loader starts its next files' reads this way, so a decode thread finds
    its file read instead of waiting for the reader's turn on a busy core."""
    cap = MAX_BYTES.get(what, 1 << 30) if max_bytes is None else max_bytes
    job = deadline.start(_read_file, path, what, error, cap)

    def result() -> bytes:
        try:
            return job.result()
        except deadline.ReadStalled as e:
            raise _stalled(f"reading {what} {shown(path)}", error, e) from None

    return result


def with_deadline(doing: str, error: type[Mnv3Error], fn, *args):
    """``fn(*args)`` on a reader thread with the read deadline (``mnv3.data.deadline``); a call
    that stalls raises ``error`` naming what it was ``doing`` and what to do."""
    try:
        return deadline.call(fn, *args)
    except deadline.ReadStalled as e:
        raise _stalled(doing, error, e) from None


def _stalled(doing: str, error: type[Mnv3Error], e: deadline.ReadStalled) -> Mnv3Error:
    return error(f"{doing} {e}: its file system stopped answering (a network mount, NFS, SMB or "
                 f"FUSE, that stalled?); check the mount and run again, or set {deadline.ENV}="
                 "SECONDS to wait longer")


def _read_file(path, what: str, error: type[Mnv3Error], cap: int) -> bytes:
    """``read_bytes`` without the deadline (runs on a reader thread; tests replace it)."""
    with open_regular(path, what, error, cap) as f:
        size = os.fstat(f.fileno()).st_size  # one read of the right size, no 256 MB buffer
        data = f.read(size + 1)
        if len(data) > size:  # it grew since: read on, up to the cap
            data += f.read(cap + 1 - len(data))
    if len(data) > cap:
        raise error(f"{what} {shown(path)} grew beyond {_size(cap)} while being read")
    return data


def read_text(path: str | os.PathLike, what: str, error: type[Mnv3Error] = DataError,
              max_bytes: int | None = None) -> str:
    """A UTF-8 text file (a leading BOM dropped) through ``read_bytes``; ``error`` when it is not
    UTF-8 text, saying at which offset."""
    data = read_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {shown(path)} is not UTF-8 text (byte {data[e.start:e.start + 1]!r} "
                    f"at offset {e.start}); save it as UTF-8{_NAME_HINT if what == 'label file' else ''}"
                    ) from None


_NAME_HINT = (", writing a file name that is not UTF-8 with \\xNN escapes as mnv3's result files "
              "do (caf\\xe9.JPEG)")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
