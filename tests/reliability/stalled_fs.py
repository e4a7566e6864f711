"""A real file whose read never returns: a tiny FUSE file system spoken straight over /dev/fuse.

No libfuse, no FUSE package: this script opens /dev/fuse, mounts it at MOUNTPOINT (mount(2),
so it needs root or CAP_SYS_ADMIN), prints ``ready`` and answers the kernel's requests itself.
Every name in the mount is a regular file of 4096 bytes: ``stat`` and ``open`` work, and a
``read`` is never answered, like a network mount (NFS, SMB, sshfs) whose server stopped
answering. Killing this process closes /dev/fuse, which aborts the connection: blocked reads
then fail with ENOTCONN, and ``umount -l`` (``detach``) removes the mount.

    python stalled_fs.py MOUNTPOINT
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import sys

IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr: 88 bytes
LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
FLUSH, INIT, OPENDIR, RELEASEDIR, ACCESS, INTERRUPT, BATCH_FORGET = 25, 26, 27, 29, 34, 36, 42
NO_REPLY = (FORGET, INTERRUPT, BATCH_FORGET)
ROOT, FILE = 1, 2
SIZE = 4096


def attr(node: int) -> bytes:
    mode = (stat.S_IFDIR | 0o755) if node == ROOT else (stat.S_IFREG | 0o644)
    size = 0 if node == ROOT else SIZE
    return ATTR.pack(node, size, 8, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


def answer(opcode: int, node: int, body: bytes) -> tuple[int, bytes] | None:
    """(error, reply body) for a request; None: never answer (READ) or no answer is due."""
    if opcode == INIT:
        major, minor, readahead, _ = struct.unpack_from("<IIII", body)
        return 0, struct.pack("<IIIIHHIIHHI7I", 7, min(minor, 31), readahead, 0, 1, 1, 4096, 1,
                              1, 0, 0, *[0] * 7)
    if opcode == LOOKUP:
        return 0, struct.pack("<QQQQII", FILE, 0, 3600, 3600, 0, 0) + attr(FILE)
    if opcode == GETATTR:
        return 0, struct.pack("<QII", 3600, 0, 0) + attr(node)
    if opcode in (OPEN, OPENDIR):
        return 0, struct.pack("<QII", 1, 0, 0)
    if opcode in (RELEASE, RELEASEDIR, FLUSH, ACCESS):
        return 0, b""
    if opcode == STATFS:
        return 0, struct.pack("<QQQQQIIII6I", 0, 0, 0, 0, 0, 4096, 255, 4096, 0, *[0] * 6)
    if opcode == READ or opcode in NO_REPLY:
        return None  # the stall: the reader waits for an answer that never comes
    return -38, b""  # ENOSYS: not implemented


def serve(mountpoint: str) -> None:
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"mnv3-stalled", os.fsencode(mountpoint), b"fuse", 2 | 4, opts) != 0:
        sys.exit(f"mount failed: {os.strerror(ctypes.get_errno())}")
    print("ready", flush=True)
    while True:
        try:
            req = os.read(fd, 1 << 17)
        except OSError as e:  # ENODEV: unmounted
            if os.environ.get("STALLED_FS_LOG"):
                print("read:", e, file=sys.stderr, flush=True)
            return
        _, opcode, unique, node, *_ = IN_HEADER.unpack_from(req)
        if os.environ.get("STALLED_FS_LOG"):
            print("op", opcode, "node", node, file=sys.stderr, flush=True)
        reply = answer(opcode, node, req[IN_HEADER.size:])
        if reply is not None:
            error, body = reply
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)


if __name__ == "__main__":
    serve(sys.argv[1])
