"""Reads with a deadline: no read of a user file can block forever (issue 19).

A file on a network mount (NFS, SMB, a FUSE file system) whose server stops answering blocks
``stat``, ``open`` and ``read`` in the kernel, and Python cannot interrupt such a call. So
``mnv3.data.files.read_bytes`` (every image, label and synsets file mnv3 reads for infer,
calibration and evaluation) runs the read on a **reader thread** and waits for it at most
``read_timeout()`` seconds (default ``DEFAULT_TIMEOUT``; the environment variable
``MNV3_READ_TIMEOUT`` changes it, ``0`` waits forever and reads on the caller's thread). On
timeout the caller gets ``ReadStalled`` (``read_bytes`` turns it into its user error: infer skips
the image and lists it in skipped.txt, or stops under ``--strict``) and goes on; the stuck
thread is abandoned.

The reader threads are **daemon** threads of our own, long-lived and reused: not a
``ThreadPoolExecutor``, whose threads the interpreter joins at exit, so one read that never
returns would make the process hang at its very end. A stuck thread never takes new work (a new
one is started when no reader is idle), and the process exits normally while it is stuck.
Cost on the fast path: one hand-off to an idle reader and back (tens of microseconds against
milliseconds to decode an image; benchmarks/read_deadline.py measures it). ``start`` hands a read
over without waiting, so a caller that knows its next files (the image loader) has them read
ahead and finds them done instead of waiting for the reader's turn on a busy core.
"""

from __future__ import annotations

import os
import queue
import threading

from mnv3.errors import UsageError

ENV = "MNV3_READ_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds: far beyond a healthy read, short enough to see a stall


class ReadStalled(Exception):
    """A read did not finish within its deadline (``seconds``); its thread was abandoned."""

    def __init__(self, seconds: float):
        super().__init__(f"did not finish in {seconds:g} s")
        self.seconds = seconds


def read_timeout() -> float | None:
    """The deadline of a read in seconds (``MNV3_READ_TIMEOUT``, default 60); None: none."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{ENV}={raw[:40]!r} is not a number of seconds; set it to e.g. 60 "
                         "(0: wait for reads forever)")
    return value or None


def call(fn, *args, timeout: float | None = None):
    """``fn(*args)`` on a reader thread, waiting at most ``timeout`` seconds (default:
    ``read_timeout()``); raises ``ReadStalled`` when it takes longer, what ``fn`` raised when
    it fails. With no deadline (``MNV3_READ_TIMEOUT=0``) it runs here, on this thread."""
    return start(fn, *args, timeout=timeout).result()


def start(fn, *args, timeout: float | None = None):
    """``call`` in two steps: ``fn(*args)`` is handed to a reader thread now, and the returned
    job's ``result()`` (call it once) waits for it at most ``timeout`` seconds from then. With
    no deadline, ``fn`` runs in ``result()``, on the caller's thread."""
    timeout = read_timeout() if timeout is None else timeout
    if not timeout:
        return _Here(fn, args)
    return _readers().submit(_Job(fn, args, timeout))


class _Here:
    """A job without a deadline: run by ``result()`` itself."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


class _Job:
    __slots__ = ("fn", "args", "timeout", "value", "error", "done")

    def __init__(self, fn, args, timeout: float):
        self.fn, self.args, self.timeout, self.value, self.error = fn, args, timeout, None, None
        self.done = threading.Lock()  # held until the job ran: cheaper than an Event
        self.done.acquire()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
            self.error = e

    def result(self):
        if not self.done.acquire(timeout=self.timeout):
            raise ReadStalled(self.timeout)
        if self.error is not None:
            error, self.error = self.error, None  # no cycle through the traceback
            raise error
        return self.value


class _Readers:
    """Daemon threads that run jobs. ``idle`` counts threads free to take one: a job is handed
    to an idle thread or to a new one, so a thread stuck in a read is never waited for."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.started = 0

    def submit(self, job: _Job) -> _Job:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
            else:
                self.started += 1
        if spawn:
            threading.Thread(target=self._serve, name="mnv3-read", daemon=True).start()
        self._jobs.put(job)
        return job

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            job.run()
            with self._lock:  # idle again before the caller hears of it: its next job is ours
                self._idle += 1
            job.done.release()


_pool: _Readers | None = None
_pool_lock = threading.Lock()


def _readers() -> _Readers:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = _Readers()
    return _pool


def _forget_pool() -> None:
    """After fork the child has none of the parent's threads: start afresh, or every read would
    wait for an 'idle' thread that does not exist."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork to survive
    os.register_at_fork(after_in_child=_forget_pool)
