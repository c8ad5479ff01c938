"""Kernel-enforced read-only processes (Linux Landlock) and resource limits for query workers.

``restrict()`` makes the calling process (and everything it later starts) unable to create,
write, truncate, rename, link or delete any file or directory, and to bind or connect TCP
sockets: every write-type access right of the Landlock ABI the kernel offers is handled by a
ruleset that grants none of them (optionally, ``writable`` directories keep them). Reads are not
restricted here: DuckDB's ``allowed_directories`` decides which files a query may read.

One exception for a lake on an S3-compatible store: TCP connect to the store's port (Landlock ABI
4 rules are by port, not by host), and nothing else; bind stays denied. A PostgreSQL catalog's
connection is opened before (``queries.connection.open_catalog``): an established socket is not
affected, and its port stays closed, so a query process never reconnects (if the connection
breaks, that one query fails). What a query process cannot reach either: an instance metadata
service (EC2/ECS roles, port 80) or a proxy (``HTTPS_PROXY``) on another port: give it its S3
keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a credentials file, which it may read).

Landlock applies to the calling thread and the threads and processes it creates afterwards, so it
must run before DuckDB starts its threads (a query worker calls it first thing after fork). On a
kernel without Landlock ``restrict()`` logs a warning and returns False: the statement guard and
DuckDB's own sandbox remain.
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import struct
from urllib.parse import urlsplit

from pushlake.location import lake_url

log = logging.getLogger("pushlake.sandbox")

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
PR_SET_NO_NEW_PRIVS = 38
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2  # ABI 4

# filesystem access rights (include/uapi/linux/landlock.h) and the ABI that introduced them
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13        # ABI 2: link/rename across directories
FS_TRUNCATE = 1 << 14     # ABI 3
FS_IOCTL_DEV = 1 << 15    # ABI 5
NET_BIND_TCP = 1 << 0     # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1                # ABI 6

WRITE_V1 = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
            | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def abi_version() -> int:
    """The Landlock ABI the kernel offers (0: none, or disabled)."""
    try:
        v = _libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(v), 0)


def write_rights(abi: int) -> int:
    """Every filesystem right that creates, changes or deletes something, as far as ``abi`` knows."""
    rights = WRITE_V1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def lake_ports() -> tuple[int, ...]:
    """The TCP ports a reader of the deployment's lake must connect to: the S3 endpoint's
    (``AWS_ENDPOINT_URL``, as ``lake.storage`` reads it, else AWS's HTTPS), none for a local lake."""
    url = lake_url()
    if not url or not url.startswith("s3://"):
        return ()
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"  # as lake.storage reads it
    u = urlsplit(endpoint)
    return (u.port or (80 if u.scheme == "http" else 443),)


def restrict(writable: tuple[str, ...] = (), warn: bool = True, connect: tuple[int, ...] | None = None) -> bool:
    """Forbid every write to the filesystem (except beneath ``writable``) and TCP (except connect
    to the ports ``connect``; default ``lake_ports()``), for good. Returns False (and logs a
    warning, unless ``warn`` is False) where the kernel has no Landlock."""
    abi = abi_version()
    if abi < 1:
        if warn:
            log.warning("Landlock is not available on this kernel: query workers are not write-proof at the "
                        "kernel level (the statement guard and DuckDB's sandbox remain)")
        return False
    fs = write_rights(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for port in (lake_ports() if connect is None else connect) if net else ():
            # struct landlock_net_port_attr { __u64 allowed_access; __u64 port; }
            rule = ctypes.create_string_buffer(struct.pack("=QQ", NET_CONNECT_TCP, int(port)), 16)
            if _libc.syscall(SYS_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(RULE_NET_PORT), rule,
                             ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule(port {port}): {os.strerror(ctypes.get_errno())}")
        for d in writable:
            dfd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                # struct landlock_path_beneath_attr { __u64 allowed_access; __s32 parent_fd; } (packed)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", fs, dfd), 12)
                if _libc.syscall(SYS_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(RULE_PATH_BENEATH), rule,
                                 ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({d}): {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(dfd)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    return True


def limit_memory(extra_bytes: int) -> int:
    """Cap the process's data (heap and private anonymous mappings, RLIMIT_DATA) at what it uses
    now plus ``extra_bytes``; returns the cap. Allocations beyond it fail (DuckDB reports an
    out-of-memory error, or the process dies): the parent is never at risk."""
    used = _vm_data()
    cap = used + extra_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    return cap


def _vm_data() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    return 0
