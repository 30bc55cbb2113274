"""The pseudonym key of a cohort store: resolving and checking it, moving a legacy embedded key out.

Mixed into :class:`petcohort.storage.store.CohortStore` (its ``_backend``,
``mode``, ``_embedded``, ``_fingerprint``, ``_key``, ``_writable``, ``lock``
and ``_put_root_attrs``); see that module's docstring for where the key lives.
"""
from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Any

from petcohort.engine.errors import ConfigError, StoreError
from petcohort.storage.key_file import (ENV_PSEUDONYM_KEY, ENV_PSEUDONYM_KEY_FILE, PseudonymKey, fingerprint_matches,
                                        key_fingerprint, read_key_file, resolve_key, settings, write_key_file)
from petcohort.storage.keys import pseudonym as _pseudonym

__all__ = ["FINGERPRINT_ATTR", "SECRET_KEY", "PseudonymKeyMixin"]

SECRET_KEY = "pseudonym.key"          # legacy stores only: the key embedded in the store
FINGERPRINT_ATTR = "pseudonym_key_fingerprint"
log = logging.getLogger("petcohort.storage.store")


class PseudonymKeyMixin:
    """Pseudonymising with the store's key, and the key's checks (methods of ``CohortStore``)."""

    def pseudonym(self, identifier: str, prefix: str = "P") -> str:
        """Pseudonym of a raw identifier under this store's key (see keys.pseudonym).

        The first call resolves the key and checks it (:meth:`check_pseudonym_key`).
        """
        return _pseudonym(identifier, self._checked_key().secret, prefix)

    def check_pseudonym_key(self) -> str:
        """Resolve the pseudonym key, check it against the store's fingerprint; return where it came from.

        Stores with an embedded key (legacy) use it. Stores with neither an
        embedded key nor a fingerprint (made with ``PETCOHORT_PSEUDONYM_KEY``
        before fingerprints existed) record the fingerprint of the key now
        (mode ``r+``). Only pseudonymising needs the key: workers of a run
        never resolve it.

        Raises
        ------
        StoreError
            ``PSEUDONYM_KEY_MISMATCH`` (nothing is written),
            ``NO_PSEUDONYM_KEY`` when no key is configured.
        ConfigError
            Key file problems (``PSEUDONYM_KEY_PERMISSIONS``, ...).
        """
        return self._checked_key().source

    def _checked_key(self) -> PseudonymKey:
        if self._key is not None:
            return self._key
        if self._embedded is not None:
            key = PseudonymKey(bytes(self._embedded), f"the key embedded in the store ({SECRET_KEY})")
        else:
            key = resolve_key(create=False)
            if key is None:
                raise StoreError("NO_PSEUDONYM_KEY", f"store {self.url!r} needs its pseudonym key and none is "
                                                     f"configured: set {ENV_PSEUDONYM_KEY_FILE} to its key file "
                                                     f"or {ENV_PSEUDONYM_KEY} to its text")
        if self._fingerprint is None:
            if self._embedded is None and self.mode == "r+":
                self._fingerprint = key_fingerprint(key.secret)
                self._put_root_attrs({FINGERPRINT_ATTR: self._fingerprint})
                log.info("store %s now records the fingerprint of its pseudonym key", self.url)
        elif not fingerprint_matches(key.secret, self._fingerprint):
            raise StoreError("PSEUDONYM_KEY_MISMATCH",
                             f"store {self.url!r} was made with another pseudonym key than the one from {key.source}; "
                             "nothing was written. Use the store's own key (set "
                             f"{ENV_PSEUDONYM_KEY_FILE} to its key file or {ENV_PSEUDONYM_KEY} to its text), "
                             "or put these studies in a new store")
        self._key = key
        return key

    def export_pseudonym_key(self, to: str | os.PathLike | None = None) -> dict[str, Any]:
        """Move a legacy store's embedded key into a key file and keep only its fingerprint.

        Steps, each safe to repeat after a crash: write the key file (0600,
        never overwriting another key), read it back and compare, record the
        fingerprint in the root attributes, and only then delete
        ``pseudonym.key`` from the store. Runs under the writer lock.

        Parameters
        ----------
        to : path, optional
            Key file to write; the default key file when None.

        Returns
        -------
        dict
            ``key_file`` (str), ``created`` (False when the file already held
            this key) and ``in_use`` (whether the configured key is now this
            one, so the store opens without further setting).

        Raises
        ------
        StoreError
            ``NO_EMBEDDED_KEY`` when the store holds no key;
            ``STORE_READ_ONLY``, ``STORE_LOCKED``.
        ConfigError
            ``PSEUDONYM_KEY_FILE_EXISTS`` when the file holds another key.
        """
        self._writable("export the pseudonym key")
        embedded = self._backend.get(SECRET_KEY)
        if embedded is None:
            raise StoreError("NO_EMBEDDED_KEY", f"store {self.url!r} holds no {SECRET_KEY}: its pseudonym key "
                                                "is already outside the store")
        target = Path(os.path.expanduser(os.fspath(to))) if to is not None else settings().default_file
        if target is None:
            raise ConfigError("NO_PSEUDONYM_KEY", "no default key file location (HOME is unset): pass --to FILE")
        with self.lock("pseudonym key export"):
            created = write_key_file(target, embedded)
            if not hmac.compare_digest(read_key_file(target), embedded):   # verify before deleting anything
                raise StoreError("PSEUDONYM_KEY_MISMATCH", f"{str(target)!r} does not read back as the store's "
                                                           "key; the store was not changed")
            if self._fingerprint is None:
                self._fingerprint = key_fingerprint(embedded)
                self._put_root_attrs({FINGERPRINT_ATTR: self._fingerprint})
            elif not fingerprint_matches(embedded, self._fingerprint):
                raise StoreError("PSEUDONYM_KEY_MISMATCH", f"store {self.url!r} holds a key that does not match "
                                                           "its own fingerprint; the store was not changed")
            self._backend.delete(SECRET_KEY)
        self._embedded = None
        self._key = PseudonymKey(embedded, f"key file {target}", target)
        try:
            current = resolve_key(create=False)
        except ConfigError:
            current = None
        in_use = current is not None and hmac.compare_digest(current.secret, embedded)
        log.info("moved the pseudonym key of store %s to %s", self.url, target)
        return {"key_file": str(target), "created": created, "in_use": in_use}
