"""Where the lake's Parquet lives: the data directory (the single-machine default) or an S3 bucket.

Every read, write, copy, delete and listing of a data file goes through a ``Storage``, so the
rest of the lake never asks which one it is. The catalog records paths RELATIVE to the lake's root
(``files/<table>/team=<t>/date=<d>/part-<uuid>.parquet``, the public tree under ``lake/``): the
same rows name the same files in a directory and under ``s3://bucket/prefix``.

- ``LocalStorage``: today's behaviour exactly. Owner-only files and directories (0600/0700, whatever
  the umask), fsync of each file and of the directories created for it, hard links for the public
  tree (a link costs a directory entry, no bytes), empty partition directories pruned.
- ``S3Storage``: objects through ``pyarrow.fs.S3FileSystem`` (built from the AWS_* environment:
  ``S3FileSystem()`` ignores AWS_ENDPOINT_URL), a PUT is durable when it returns, the public tree
  holds server-side copies (CopyObject: no bytes through this machine) compared by ETag and size,
  and deletes go through s3fs in bulk (DeleteObjects, 1000 keys a request): pyarrow's
  ``delete_file`` PUTs an empty "directory marker" when a prefix becomes empty, which a plain
  reader's glob would then see. There are no directories: nothing to create, fsync or prune.
  s3fs is imported only when an s3:// lake is opened (the embedded default does not need it).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pushlake import location
from pushlake.fsutil import DIR_MODE, create_private, fsync_dir

from .schema import SCHEMAS

log = logging.getLogger("pushlake.compactor")

_cache: dict[tuple, "Storage"] = {}
_cache_guard = threading.Lock()


def open_storage(data_dir: Path, url: str | None = None) -> "Storage":
    """The lake of this data directory: ``url`` (``s3://bucket/prefix``), else the deployment's
    (``pushlake.location.lake_url``: None or ``""`` = Parquet under ``data_dir``). One object per
    (data directory, lake, endpoint): they hold connection pools."""
    url = location.lake_url(url)
    if url is None:
        key: tuple = ("local", str(Path(data_dir).absolute()))
    else:  # per process too: the SDK's connections and s3fs's event loop do not survive a fork
        key = ("s3", url, os.environ.get("AWS_ENDPOINT_URL", ""), os.environ.get("AWS_ACCESS_KEY_ID", ""),
               os.getpid())
    with _cache_guard:
        st = _cache.get(key)
        if st is None:
            st = _cache[key] = LocalStorage(Path(data_dir)) if url is None else S3Storage(url)
        return st


class Storage:
    """The lake's files by relative path (see the module docstring)."""

    local: bool
    url: str
    filesystem: pafs.FileSystem

    def uri(self, rel: str) -> str:
        """What DuckDB, pyarrow or Polars open: an absolute path, or ``s3://bucket/prefix/rel``."""
        raise NotImplementedError

    def root_uri(self) -> str:
        raise NotImplementedError

    def fs_path(self, rel: str) -> str:
        """The path of ``rel`` for calls on ``self.filesystem``."""
        raise NotImplementedError

    # --- files ---------------------------------------------------------------------------------
    def write_table(self, rel: str, table: pa.Table, **parquet_options) -> int:
        """Write a new file (refusing one that exists locally); durable on return. Its bytes."""
        with self.writer(rel, table.schema, **parquet_options) as w:
            w.write_table(table, row_group_size=parquet_options.get("row_group_size"))
        return self.size(rel)

    def writer(self, rel: str, schema: pa.Schema, **parquet_options):
        """A context manager: a ``pq.ParquetWriter`` on a new file, durable when the block ends
        (a block that raises leaves no file)."""
        raise NotImplementedError

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.fs_path(rel), columns=columns, filesystem=self.filesystem)

    def parquet_file(self, rel: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs_path(rel), filesystem=self.filesystem)

    def read_schema(self, rel: str) -> pa.Schema:
        with self.parquet_file(rel) as f:
            return f.schema_arrow

    def read_bytes(self, rel: str) -> bytes:
        with self.filesystem.open_input_stream(self.fs_path(rel)) as f:
            return f.read()

    def _info(self, rel: str) -> pafs.FileInfo:
        info = self.filesystem.get_file_info(self.fs_path(rel))
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, "no such file in the lake", self.uri(rel))
        return info

    def size(self, rel: str) -> int:
        return self._info(rel).size

    def exists(self, rel: str) -> bool:
        return self.filesystem.get_file_info(self.fs_path(rel)).type != pafs.FileType.NotFound

    def mtime(self, rel: str) -> float:
        """Seconds since the epoch (S3: the object's LastModified)."""
        return self._info(rel).mtime.timestamp()

    def delete(self, rels: Iterable[str]) -> None:
        """Delete these files; missing ones are fine."""
        raise NotImplementedError

    def discard(self, rels: Iterable[str]) -> None:
        """Delete the files of a step that failed. Locally as ``delete``; on S3 a failure (the
        store is what failed, perhaps) is logged instead of hiding the step's own error: the
        files are orphans, which ``lake.maintenance.remove_orphans`` removes later."""
        self.delete(rels)

    # --- listings --------------------------------------------------------------------------------
    def list_files(self, tree: str = "") -> list[str]:
        """Every file under ``tree`` (``""``: the whole lake root), relative paths."""
        raise NotImplementedError

    def list_parquet(self, tree: str) -> list[str]:
        """The ``*.parquet`` files under ``tree/<table>/`` for every table of the lake's schemas
        (anything else found there is left alone)."""
        out = []
        for r in self.list_files(tree):
            parts = r.split("/")
            if len(parts) >= 3 and parts[1] in SCHEMAS and r.endswith(".parquet"):
                out.append(r)
        return out

    # --- the public tree -----------------------------------------------------------------------
    def publish(self, src_rel: str, dst_rel: str) -> bool:
        """Make ``dst_rel`` the same file as ``src_rel``; False if it already was there (local)
        or the source has vanished (S3: replaced and vacuumed meanwhile)."""
        raise NotImplementedError

    def publish_many(self, pairs: list[tuple[str, str]]) -> int:
        return sum(self.publish(s, d) for s, d in pairs)

    def unpublish(self, dst_rel: str) -> bool:
        """Remove a public copy; False if there was none (S3 cannot tell: always True)."""
        raise NotImplementedError

    def unpublish_many(self, dst_rels: Iterable[str]) -> int:
        return sum(self.unpublish(d) for d in dst_rels)

    def same_object(self, src_rel: str, dst_rel: str) -> bool:
        """Is the public copy the live file itself (local: same inode; S3: same ETag and size)?"""
        raise NotImplementedError

    def same_objects(self, pairs: list[tuple[str, str]]) -> list[bool]:
        return [self.same_object(s, d) for s, d in pairs]

    def duckdb_filesystem(self, read_only: bool = True):
        """An fsspec filesystem for ``duckdb_con.register_filesystem`` (None: DuckDB reads local
        paths itself). ``read_only`` refuses every write, delete and copy."""
        return None


# --- the data directory -------------------------------------------------------------------------

class LocalStorage(Storage):
    local = True

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir).absolute()
        self.url = str(self.root)
        self.filesystem = pafs.LocalFileSystem()

    def uri(self, rel: str) -> str:
        return str(self.root / rel)

    def root_uri(self) -> str:
        return str(self.root)

    def fs_path(self, rel: str) -> str:
        return str(self.root / rel)

    def _mkdirs(self, d: Path) -> list[Path]:
        """Create the missing directories (owner-only, whatever the umask); the created ones."""
        created = []
        p = d
        while not p.exists():
            created.append(p)
            p = p.parent
        for c in reversed(created):
            c.mkdir(mode=DIR_MODE, exist_ok=True)
        return created

    @contextlib.contextmanager
    def writer(self, rel: str, schema: pa.Schema, **parquet_options) -> Iterator[pq.ParquetWriter]:
        path = self.root / rel
        created = self._mkdirs(path.parent)
        create_private(path)
        opts = {k: v for k, v in parquet_options.items() if k != "row_group_size"}
        try:
            with pq.ParquetWriter(path, schema, **opts) as w:
                yield w
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        for c in [path.parent] + [c.parent for c in created]:
            fsync_dir(c)

    def write_table(self, rel: str, table: pa.Table, **parquet_options) -> int:
        path = self.root / rel
        created = self._mkdirs(path.parent)
        create_private(path)
        pq.write_table(table, path, **parquet_options)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for c in [path.parent] + [c.parent for c in created]:
            fsync_dir(c)
        return path.stat().st_size

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.root / rel, columns=columns, schema=None)

    def parquet_file(self, rel: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.root / rel)

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def mtime(self, rel: str) -> float:
        return (self.root / rel).stat().st_mtime

    def delete(self, rels: Iterable[str]) -> None:
        for rel in rels:
            (self.root / rel).unlink(missing_ok=True)

    def list_files(self, tree: str = "") -> list[str]:
        root = self.root / tree if tree else self.root
        if not root.is_dir():
            return []
        return [str(p.relative_to(self.root)) for p in root.rglob("*") if p.is_file()]

    def list_parquet(self, tree: str) -> list[str]:
        out = []
        for tbl in SCHEMAS:
            root = self.root / tree / tbl
            if root.is_dir():
                out += [str(p.relative_to(self.root)) for p in root.rglob("*.parquet")]
        return out

    def publish(self, src_rel: str, dst_rel: str) -> bool:
        src, dst = self.root / src_rel, self.root / dst_rel
        try:
            os.link(src, dst)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the partition's first live file (the file itself missing raises again)
            self._mkdirs(dst.parent)
            os.link(src, dst)
        return True

    def unpublish(self, dst_rel: str) -> bool:
        dst = self.root / dst_rel
        try:
            dst.unlink()
        except FileNotFoundError:
            return False
        self._prune(dst.parent, self.root / Path(dst_rel).parts[0])
        return True

    def _prune(self, d: Path, root: Path) -> None:
        """Remove partition directories left empty (a team's last trip of a day deleted), up to
        the table's directory."""
        while d != root and d.parent != root:
            try:
                d.rmdir()
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            d = d.parent

    def same_object(self, src_rel: str, dst_rel: str) -> bool:
        a, b = (self.root / dst_rel).stat(), (self.root / src_rel).stat()
        return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


# --- S3 -------------------------------------------------------------------------------------------

def _s3_settings() -> dict:
    """Endpoint, region and keys from the AWS_* environment (None: the SDK's own defaults)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    return {"endpoint": endpoint,
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            "key": os.environ.get("AWS_ACCESS_KEY_ID") or None,
            "secret": os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            "token": os.environ.get("AWS_SESSION_TOKEN") or None}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc or u.query or u.fragment:
        raise ValueError(f"invalid lake URL {url!r}: expected s3://bucket/prefix")
    prefix = u.path.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"invalid lake URL {url!r}: empty, '.' or '..' path segment")
    return u.netloc, prefix


# read-only methods of the S3 API (every other one writes, deletes or reconfigures)
_READ_CALLS = ("get_", "head_", "list_")
# how pyarrow words a CopyObject whose source is missing (lowercased)
_MISSING = ("nosuchkey", "no_such_key", "does not exist", "not found")


class S3Storage(Storage):
    local = False

    def __init__(self, url: str):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        cfg = _s3_settings()
        kw: dict = {"region": cfg["region"]}
        if cfg["endpoint"]:
            e = urlparse(cfg["endpoint"])
            kw["endpoint_override"] = e.netloc or e.path
            kw["scheme"] = e.scheme or "https"
        if cfg["key"] and cfg["secret"]:
            kw.update(access_key=cfg["key"], secret_key=cfg["secret"], session_token=cfg["token"])
        self.filesystem = pafs.S3FileSystem(**kw)
        self._cfg = cfg
        self._s3fs = self._s3fs_ro = None
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="lake-s3")

    def _fsspec(self, read_only: bool = False):
        import s3fs  # only for an s3:// lake (the `s3` extra)

        cfg = self._cfg
        cls = _read_only_class(s3fs.S3FileSystem) if read_only else s3fs.S3FileSystem
        return cls(endpoint_url=cfg["endpoint"], key=cfg["key"], secret=cfg["secret"], token=cfg["token"],
                   client_kwargs={"region_name": cfg["region"]}, use_listings_cache=False,
                   skip_instance_cache=True)

    @property
    def s3fs(self):
        """An s3fs filesystem for what pyarrow does badly (bulk deletes, ETags)."""
        with self._guard:
            if self._s3fs is None:
                self._s3fs = self._fsspec()
            return self._s3fs

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    def root_uri(self) -> str:
        return self.url

    def fs_path(self, rel: str) -> str:
        return f"{self.bucket}/{self.key(rel)}"

    def _rel(self, fs_path: str) -> str:
        head = f"{self.bucket}/{self.prefix}/" if self.prefix else f"{self.bucket}/"
        return fs_path[len(head):]

    @contextlib.contextmanager
    def _upload(self, rel: str) -> Iterator[pa.NativeFile]:
        """An output stream whose object exists, durably, once the block ends; a block that
        raises leaves no object (the multipart upload aborted, anything written deleted)."""
        out = self.filesystem.open_output_stream(self.fs_path(rel))
        try:
            yield out
            out.close()  # completes the upload: the object exists, durably, from here
        except BaseException:
            with contextlib.suppress(Exception):
                out.abort() if hasattr(out, "abort") else out.close()
            with contextlib.suppress(Exception):
                self.delete([rel])
            raise

    @contextlib.contextmanager
    def writer(self, rel: str, schema: pa.Schema, **parquet_options) -> Iterator[pq.ParquetWriter]:
        opts = {k: v for k, v in parquet_options.items() if k != "row_group_size"}
        with self._upload(rel) as out, pq.ParquetWriter(out, schema, **opts) as w:
            yield w

    def write_table(self, rel: str, table: pa.Table, **parquet_options) -> int:
        with self._upload(rel) as out:
            pq.write_table(table, out, **parquet_options)
            n = out.tell()
        return n

    def delete(self, rels: Iterable[str]) -> None:
        keys = [self.key(r) for r in rels]
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            resp = self.s3fs.call_s3("delete_objects", Bucket=self.bucket,
                                     Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise OSError(f"could not delete {len(errors)} object(s) of {self.url}, e.g. "
                              f"{errors[0].get('Key')}: {errors[0].get('Code')} {errors[0].get('Message')}")

    def list_files(self, tree: str = "") -> list[str]:
        base = self.fs_path(tree) if tree else (f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket)
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        return [self._rel(i.path) for i in self.filesystem.get_file_info(sel) if i.type == pafs.FileType.File]

    def _etags(self, tree: str) -> dict[str, tuple[str, int]]:
        """rel -> (ETag, size) of every object under ``tree``, in one listing."""
        base = self.fs_path(tree)
        try:
            found = self.s3fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {self._rel(p): (str(i.get("ETag", "")).strip('"'), int(i.get("size", -1)))
                for p, i in found.items() if i.get("type") == "file"}

    def publish(self, src_rel: str, dst_rel: str) -> bool:
        try:
            self.filesystem.copy_file(self.fs_path(src_rel), self.fs_path(dst_rel))
        except OSError as e:
            msg = str(e).lower()
            if any(m in msg for m in _MISSING) and not self.exists(src_rel):
                log.warning("not published: %s vanished (replaced and vacuumed meanwhile)", src_rel)
                return False
            raise
        return True

    def publish_many(self, pairs: list[tuple[str, str]]) -> int:
        """Server-side copies, several at once (each is one round trip)."""
        if len(pairs) <= 1:
            return sum(self.publish(s, d) for s, d in pairs)
        return sum(self._pool.map(lambda p: self.publish(*p), pairs))

    def discard(self, rels: Iterable[str]) -> None:
        rels = list(rels)
        try:
            self.delete(rels)
        except Exception:  # noqa: BLE001 - see Storage.discard
            log.warning("could not delete %d file(s) of a failed step from %s (orphans, removed later)",
                        len(rels), self.url, exc_info=True)

    def unpublish(self, dst_rel: str) -> bool:
        self.delete([dst_rel])
        return True

    def unpublish_many(self, dst_rels: Iterable[str]) -> int:
        rels = list(dst_rels)
        self.delete(rels)
        return len(rels)

    def same_object(self, src_rel: str, dst_rel: str) -> bool:
        a, b = self.s3fs.info(self.fs_path(src_rel)), self.s3fs.info(self.fs_path(dst_rel))
        return _same((str(a.get("ETag", "")).strip('"'), int(a["size"])),
                     (str(b.get("ETag", "")).strip('"'), int(b["size"])))

    def same_objects(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Two listings (each tree once) rather than two HEADs a pair."""
        if not pairs:
            return []
        trees = {r.split("/", 1)[0] for p in pairs for r in p}
        tags: dict[str, tuple[str, int]] = {}
        for t in trees:
            tags.update(self._etags(t))
        return [s in tags and d in tags and _same(tags[s], tags[d]) for s, d in pairs]

    def duckdb_filesystem(self, read_only: bool = True):
        """One instance per storage and mode (an s3fs session takes ~0.4 s to set up; DuckDB
        connections can share it)."""
        if not read_only:
            return self.s3fs
        with self._guard:
            if self._s3fs_ro is None:
                self._s3fs_ro = self._fsspec(read_only=True)
            return self._s3fs_ro


def _same(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """A multipart object's ETag ("…-N") is not its content's MD5, and a copy's is: then the
    sizes alone decide (a wrong copy of the same size is not worth a full read)."""
    if a[1] != b[1]:
        return False
    if "-" in a[0] or "-" in b[0]:
        return True
    return a[0] == b[0]


_ro_classes: dict[type, type] = {}


def _read_only_class(base: type) -> type:
    """A subclass of s3fs.S3FileSystem that can only read: every method that writes, deletes,
    copies or creates is refused, and so is any S3 call that is not a get/head/list (the one
    door every s3fs operation goes through), so that a query engine given it cannot change the lake."""
    if base in _ro_classes:
        return _ro_classes[base]

    def refuse(name):
        def method(self, *args, **kwargs):
            raise PermissionError(errno.EACCES, f"the lake is read-only here ({name} refused)")
        method.__name__ = name
        return method

    ns: dict = {"cachable": False}
    for name in ("rm", "rm_file", "rmdir", "pipe", "pipe_file", "put", "put_file", "mkdir", "makedirs",
                 "copy", "cp", "cp_file", "mv", "move", "rename", "touch", "upload", "merge", "setxattrs",
                 "chmod", "set_tags", "put_tags", "make_bucket_versioned", "bulk_delete",
                 "start_transaction", "end_transaction", "write_text", "write_bytes", "mkdirs"):
        ns[name] = refuse(name)
        ns["_" + name] = refuse(name)

    def _open(self, path, mode="rb", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise PermissionError(errno.EACCES, f"the lake is read-only here (open {path!r} in mode {mode!r} refused)")
        return base._open(self, path, mode, *args, **kwargs)

    async def _call_s3(self, method, *args, **kwargs):
        name = method if isinstance(method, str) else getattr(method, "__name__", str(method))
        if not name.startswith(_READ_CALLS):
            raise PermissionError(errno.EACCES, f"the lake is read-only here (S3 {name} refused)")
        return await base._call_s3(self, method, *args, **kwargs)

    from fsspec.asyn import sync_wrapper

    ns["_open"] = _open
    ns["_call_s3"] = _call_s3
    ns["call_s3"] = sync_wrapper(_call_s3)  # s3fs binds its own sync twin at class level
    cls = type("ReadOnlyS3FileSystem", (base,), ns)
    _ro_classes[base] = cls
    return cls
