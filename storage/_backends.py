"""Byte-level access to the three store kinds behind one small interface.

zarr handles the arrays; this module handles what zarr does not: small JSON
records, listings, exclusive create (for the lock) and moving a staged tree
into place. Each method maps to the cheapest primitive of the backend:

- ``local`` (zarr ``LocalStore``): plain ``os`` calls; a record is written to
  a temp file then ``os.replace``-d (atomic on POSIX, see rename(2)); a staged
  array directory is moved with one ``os.rename``.
- ``memory`` (zarr ``MemoryStore``): one dict per ``memory://NAME`` kept in a
  module-level registry so two opens of the same name share data (tests).
- ``fsspec`` (zarr ``FsspecStore``, e.g. ``s3://bucket/prefix``): each object
  is one PUT; a tree is moved by copy-then-delete (object stores have no
  rename). Calls go through zarr's own event loop (``zarr.core.sync.sync``)
  because ``FsspecStore`` holds an async filesystem bound to that loop.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from petcohort.engine.errors import StoreError

__all__ = ["Backend", "open_backend", "forget_memory_store", "zarr_group"]

_MEMORY: dict[str, dict[str, Any]] = {}
_MEMORY_LOCK = threading.Lock()


def forget_memory_store(name: str) -> None:
    """Drop ``memory://name`` from the in-process registry (tests)."""
    with _MEMORY_LOCK:
        _MEMORY.pop(name, None)


def _memory_dict(name: str, create: bool) -> dict[str, Any] | None:
    with _MEMORY_LOCK:
        if name not in _MEMORY and create:
            _MEMORY[name] = {}
        return _MEMORY.get(name)



def _durable_temp(path, data: bytes):
    """Write ``data`` to a fsynced private temp file beside ``path``; return (path, temp path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path, tmp

class Backend:
    """Key/value view of one store root, plus the zarr store for arrays.

    Keys are ``/``-separated paths relative to the store root. Prefixes passed
    to listing and tree methods end with ``/``.
    """

    def __init__(self, kind: str, zstore: Any, url: str, *, root: Path | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.storage_options = storage_options
        self.zstore = zstore
        self.url = url
        self.root = root
        self.read_only = bool(zstore.read_only)

    # -- single objects ----------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """Bytes stored at ``key``, or None when absent."""
        if self.kind == "local":
            try:
                return (self.root / key).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        buf = sync(self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """Fetch many small objects at once (concurrently for object stores)."""
        if self.kind == "local":
            out = {k: self.get(k) for k in keys}
            return {k: v for k, v in out.items() if v is not None}

        async def fetch() -> list[Any]:
            proto = default_buffer_prototype()
            return await asyncio.gather(*(self.zstore.get(k, prototype=proto) for k in keys))

        bufs = sync(fetch())
        return {k: b.to_bytes() for k, b in zip(keys, bufs) if b is not None}

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` so that readers see the old or the new bytes, never a mix.

        Local: temp file in the same directory + fsync + ``os.replace``.
        Memory: one dict assignment. Object stores: one PUT (atomic per object).
        """
        if self.kind == "local":
            path, tmp = _durable_temp(self.root / key, data)
            try:
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        sync(self.zstore.set(key, Buffer.from_bytes(data)))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist; True when this call created it.

        Local: temp file + ``os.link`` (exclusive and atomic on POSIX). Memory: dict
        ``setdefault`` under a lock. S3 via s3fs: a conditional PUT
        (``If-None-Match: *``) where the filesystem supports it, else
        write-then-read-back (last writer wins; the loser sees foreign bytes).
        """
        if self.kind == "local":
            # Write the full content to a private temp file, then hard-link it
            # to the final name: link(2) fails with EEXIST when the name is
            # taken, so the create is exclusive AND never exposes a
            # half-written file (the trick of python-atomicwrites).
            path, tmp = _durable_temp(self.root / key, data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        if self.kind == "memory":
            with _MEMORY_LOCK:
                d = self.zstore._store_dict
                if key in d:
                    return False
                d[key] = Buffer.from_bytes(data)
                return True
        return self._fsspec_put_if_absent(key, data)

    def _fsspec_put_if_absent(self, key: str, data: bytes) -> bool:
        fs, full = self.zstore.fs, f"{self.zstore.path}/{key}"
        try:
            sync(fs._pipe_file(full, data, mode="create"))
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError, ValueError):
            pass  # this filesystem has no conditional create: fall back
        except OSError as exc:
            # s3fs maps 412 PreconditionFailed to an OSError subclass; anything
            # else is a real error.
            if "precondition" in str(exc).lower() or "412" in str(exc):
                return False
            raise
        if self.get(key) is not None:
            return False
        self.put(key, data)
        return self.get(key) == data

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        if self.kind == "local":
            (self.root / key).unlink(missing_ok=True)
            return
        sync(self.zstore.delete(key))

    # -- trees --------------------------------------------------------------
    def list_prefix(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (recursive), as full keys."""
        if self.kind == "local":
            base = self.root / prefix
            if not base.is_dir():
                return []
            out = []
            for dirpath, _dirs, files in os.walk(base):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                out.extend(f"{rel}/{f}" for f in files)
            return out
        if self.kind == "fsspec":
            # Another process may have written since our last listing; s3fs
            # caches directory listings per filesystem instance.
            self.zstore.fs.invalidate_cache(f"{self.zstore.path}/{prefix}".rstrip("/"))

        async def collect() -> list[str]:
            return [k async for k in self.zstore.list_prefix(prefix)]

        return sync(collect())

    def list_dir(self, prefix: str) -> list[str]:
        """Immediate children (names, no trailing ``/``) of ``prefix``."""
        if self.kind == "local":
            base = self.root / prefix
            try:
                return [p.name for p in base.iterdir() if not p.name.startswith(".")]
            except (FileNotFoundError, NotADirectoryError):
                return []
        if self.kind == "fsspec":
            self.zstore.fs.invalidate_cache(f"{self.zstore.path}/{prefix}".rstrip("/"))

        async def collect() -> list[str]:
            return [k.rstrip("/") async for k in self.zstore.list_dir(prefix)]

        return sync(collect())

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        if self.kind == "local":
            shutil.rmtree(self.root / prefix, ignore_errors=True)
            return
        keys = self.list_prefix(prefix)

        async def remove() -> None:
            await asyncio.gather(*(self.zstore.delete(k) for k in keys))

        if keys:
            sync(remove())

    def move_prefix(self, src: str, dst: str) -> None:
        """Move the tree ``src`` to ``dst`` (``dst`` must be absent).

        Local: one ``os.rename`` of the directory. Others: copy every key,
        then delete the source (not atomic; the caller's record-last protocol
        makes the partial state invisible).
        """
        if self.kind == "local":
            target = self.root / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.root / src, target)
            return
        keys = self.list_prefix(src)

        async def copy() -> None:
            proto = default_buffer_prototype()

            async def one(k: str) -> None:
                buf = await self.zstore.get(k, prototype=proto)
                if buf is not None:
                    await self.zstore.set(dst + k[len(src):], buf)

            await asyncio.gather(*(one(k) for k in keys))

        sync(copy())
        self.delete_prefix(src)


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def open_backend(url: str | os.PathLike, *, read_only: bool, create: bool,
                 storage_options: dict[str, Any] | None = None) -> Backend:
    """Resolve ``url`` to a :class:`Backend` without writing anything.

    Parameters
    ----------
    url : str or path
        Local path, ``file://`` path, ``memory://NAME`` or any fsspec URL.
    read_only : bool
        Open the zarr store read-only.
    create : bool
        Whether the caller intends to create the store (local folders and
        memory names are then made; otherwise a missing one is NOT_A_STORE).
    storage_options : dict, optional
        Passed to fsspec (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise StoreError("NOT_A_STORE", f"store url must be a non-empty path or URL, got {url!r}")
    if text.startswith("memory://"):
        name = text[len("memory://"):]
        d = _memory_dict(name, create)
        if d is None:
            raise StoreError("NOT_A_STORE", f"no in-memory store named {name!r} in this process")
        zstore = MemoryStore(store_dict=d, read_only=read_only)
        return Backend("memory", zstore, text)
    if _is_local(text):
        root = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser().absolute()
        if not create and not root.is_dir():
            raise StoreError("NOT_A_STORE", f"{text!r} is not a cohort store (no such folder)")
        if create:
            root.mkdir(parents=True, exist_ok=True)
        return Backend("local", LocalStore(root, read_only=read_only), str(root), root=root)
    try:
        zstore = FsspecStore.from_url(text, storage_options=storage_options or {}, read_only=read_only)
    except (ImportError, ValueError) as exc:
        raise StoreError("NOT_A_STORE", f"cannot open {text!r} with fsspec: {exc}") from exc
    return Backend("fsspec", zstore, text, storage_options=storage_options)


def zarr_group(backend: Backend, path: str, *, mode: str) -> zarr.Group:
    """Open a zarr group of the backend's store (``mode`` as in zarr.open_group)."""
    return zarr.open_group(store=backend.zstore, path=path, mode=mode, zarr_format=3)
