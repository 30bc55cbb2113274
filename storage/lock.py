"""One writer run per store: a lock object ``lock.json`` in the store root.

The lock holds ``owner`` (a label such as ``"petcohort run"``), ``pid``,
``hostname``, ``time`` (UTC ISO 8601) and a random ``token``. It is created
with an exclusive create (local: temp file + ``os.link``; S3: conditional PUT
``If-None-Match: *`` where supported, else write then read back), so two runs
cannot both believe they hold it. A lock left by a dead process on this host
(``os.kill(pid, 0)`` -> no such process) is stale and taken over with a
warning; a lock from another host is never taken over automatically (we
cannot see its processes): remove ``lock.json`` by hand if that run is dead.

Dask workers of the locked run do not take the lock; only the driver does.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
import socket
from typing import Any, Callable

from petcohort.engine.errors import StoreError
from petcohort.storage._backends import Backend

__all__ = ["LOCK_KEY", "StoreLock", "read_lock", "pid_alive"]

LOCK_KEY = "lock.json"
log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 probes without killing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(backend: Backend) -> dict[str, Any] | None:
    """The current lock content, ``{}`` when unreadable, None when unlocked."""
    raw = backend.get(LOCK_KEY)
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "an unreadable lock.json"
    return (f"owner {info.get('owner')!r} (pid {info.get('pid')} on {info.get('hostname')}, "
            f"since {info.get('time')})")


def _is_stale(info: dict[str, Any]) -> bool:
    pid = info.get("pid")
    return (bool(info) and info.get("hostname") == socket.gethostname()
            and isinstance(pid, int) and not pid_alive(pid))


class StoreLock:
    """Context manager holding the store's writer lock.

    Parameters
    ----------
    backend : Backend
        The store backend (must be writable).
    owner : str
        Who holds the lock; shown to the next one who tries.
    on_acquire : callable, optional
        Called once the lock is held (the store removes leftover staging:
        with the lock held, no other writer run can be staging).

    Raises
    ------
    StoreError
        ``STORE_LOCKED`` naming the holder, when another live run holds it.
    """

    def __init__(self, backend: Backend, owner: str, *, on_acquire: Callable[[], None] | None = None) -> None:
        if not isinstance(owner, str) or not owner:
            raise StoreError("BAD_LOCK_OWNER", f"lock owner must be a non-empty str, got {owner!r}")
        self._backend = backend
        self._on_acquire = on_acquire
        self.info: dict[str, Any] = {
            "owner": owner,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": secrets.token_hex(8),
        }
        self.held = False

    def acquire(self) -> None:
        data = json.dumps(self.info, sort_keys=True).encode("utf-8")
        if not self._backend.put_if_absent(LOCK_KEY, data):
            holder = read_lock(self._backend)
            if holder is not None and not _is_stale(holder):
                raise StoreError("STORE_LOCKED", f"store {self._backend.url} is locked by {_describe(holder)}; "
                                                 "wait for that run to finish")
            if holder is not None:
                log.warning("taking over a stale store lock of %s: that process is gone", _describe(holder))
                self._backend.delete(LOCK_KEY)
            if not self._backend.put_if_absent(LOCK_KEY, data):
                holder = read_lock(self._backend) or {}
                raise StoreError("STORE_LOCKED", f"store {self._backend.url} is locked by {_describe(holder)}")
        self.held = True
        if self._on_acquire is not None:
            self._on_acquire()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = read_lock(self._backend)
        if holder and holder.get("token") == self.info["token"]:
            self._backend.delete(LOCK_KEY)
        else:
            log.warning("store lock of %s was taken over by %s; not removing it",
                        self.info["owner"], _describe(holder or {}))

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
