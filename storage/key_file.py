"""The pseudonym key: where it comes from, its file, its fingerprint.

The pseudonym key (the HMAC secret of :func:`petcohort.storage.keys.pseudonym`)
lives *outside* the store, so that a copy of the store cannot be used to test
candidate PatientIDs. It comes from, in this order:

``PETCOHORT_PSEUDONYM_KEY``
    The secret as text (>= 16 characters, used as UTF-8 bytes exactly as
    given). Several stores (or sites) sharing it share one key space.
``PETCOHORT_PSEUDONYM_KEY_FILE``
    Path of a key file.
the default key file
    ``$XDG_CONFIG_HOME/petcohort/pseudonym.key`` (``~/.config/petcohort/...``
    when ``XDG_CONFIG_HOME`` is unset or relative, as the XDG Base Directory
    Specification asks). :meth:`CohortStore.create` makes it on first use
    (folder 0700, file 0600) and logs its path once at WARNING.

A key file holds the secret text on its first line (surrounding whitespace
is ignored) and must not be readable by group or others (mode 0600). Text
of the form ``base64:<RFC 4648 base64>`` stands for those raw bytes (how
``petcohort key export`` writes the 32 random bytes of a legacy store).
The environment is read only in :func:`settings`.

The store keeps only :func:`key_fingerprint`: PBKDF2-HMAC-SHA256 (RFC 8018)
of the secret with a per-store random salt and a domain label. It lets the
store refuse another key; it is no HMAC of any identifier, so it answers no
question about PatientIDs, and the iterations slow down guessing weak keys.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import secrets
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from petcohort.engine.errors import ConfigError, StoreError

__all__ = ["KeySettings", "PseudonymKey", "settings", "default_key_path", "resolve_key", "read_key_file",
           "write_key_file", "secret_to_text", "key_fingerprint", "fingerprint_matches", "ENV_PSEUDONYM_KEY",
           "ENV_PSEUDONYM_KEY_FILE", "KEY_FILE_NAME", "MIN_SECRET_LEN"]

ENV_PSEUDONYM_KEY = "PETCOHORT_PSEUDONYM_KEY"
ENV_PSEUDONYM_KEY_FILE = "PETCOHORT_PSEUDONYM_KEY_FILE"
KEY_FILE_NAME = "pseudonym.key"
MIN_SECRET_LEN = 16
_B64_PREFIX = "base64:"
_FINGERPRINT_KDF = "pbkdf2-sha256"
_FINGERPRINT_ITERATIONS = 100_000
# Domain label mixed into the salt: the fingerprint can never equal a value
# computed for another purpose from the same secret.
_FINGERPRINT_LABEL = b"petcohort/pseudonym-key-fingerprint/v1\x00"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeySettings:
    """Where the pseudonym key comes from (parsed once from the environment).

    Attributes
    ----------
    pseudonym_key : bytes or None
        Secret from ``PETCOHORT_PSEUDONYM_KEY``; None when unset.
    key_file : Path or None
        ``PETCOHORT_PSEUDONYM_KEY_FILE``; None when unset.
    default_file : Path or None
        The default key file (see :func:`default_key_path`); None only when
        no home folder is known.
    """

    pseudonym_key: bytes | None = field(default=None, repr=False)
    key_file: Path | None = None
    default_file: Path | None = None


@dataclass(frozen=True)
class PseudonymKey:
    """A resolved pseudonym key.

    Attributes
    ----------
    secret : bytes
        The HMAC secret (never shown by ``repr``).
    source : str
        Where it came from, for messages: ``environment variable
        PETCOHORT_PSEUDONYM_KEY`` or ``key file /path``.
    path : Path or None
        The key file, when it came from one.
    """

    secret: bytes = field(repr=False)
    source: str
    path: Path | None = None


def default_key_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The default key file: ``$XDG_CONFIG_HOME/petcohort/pseudonym.key`` or ``~/.config/petcohort/...``.

    A relative ``XDG_CONFIG_HOME`` is ignored (XDG Base Directory
    Specification: "all paths set in these environment variables must be
    absolute"). None when neither it nor ``HOME`` is set.
    """
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "petcohort" / KEY_FILE_NAME
    home = env.get("HOME", "")
    if not home:
        return None
    return Path(home) / ".config" / "petcohort" / KEY_FILE_NAME


def _parse_secret(text: str, what: str, *, strip: bool) -> bytes:
    """Secret bytes of key text (``base64:`` form or UTF-8 text); never echoes the text."""
    if strip:
        text = text.strip()
    if text.startswith(_B64_PREFIX):
        try:
            secret = base64.b64decode(text[len(_B64_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("PSEUDONYM_KEY_SHORT", f"{what} starts with {_B64_PREFIX!r} but the rest is not "
                                                     "valid base64") from None
        size, unit = len(secret), "bytes"
    else:
        secret, size, unit = text.encode("utf-8"), len(text), "characters"
    if size < MIN_SECRET_LEN:
        # The value itself is a secret: never echo it.
        raise ConfigError("PSEUDONYM_KEY_SHORT",
                          f"{what} must hold at least {MIN_SECRET_LEN} {unit}, got {size}")
    return secret


def settings(environ: Mapping[str, str] | None = None) -> KeySettings:
    """Read ``PETCOHORT_PSEUDONYM_KEY``, ``PETCOHORT_PSEUDONYM_KEY_FILE`` and the default path (the only place).

    Parameters
    ----------
    environ : mapping, optional
        Environment to read; ``os.environ`` when None (tests pass a dict).

    Raises
    ------
    ConfigError
        ``PSEUDONYM_KEY_SHORT`` when the secret text has fewer than 16 characters.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PSEUDONYM_KEY) or None
    key = None if raw is None else _parse_secret(raw, ENV_PSEUDONYM_KEY, strip=False)
    file_text = env.get(ENV_PSEUDONYM_KEY_FILE) or None
    key_file = None if file_text is None else Path(os.path.expanduser(file_text))
    return KeySettings(key, key_file, default_key_path(env))


def read_key_file(path: str | os.PathLike) -> bytes:
    """The secret held by a key file, after checking that only its owner can read it.

    Raises
    ------
    ConfigError
        ``PSEUDONYM_KEY_FILE_MISSING`` (absent, not a regular file or
        unreadable), ``PSEUDONYM_KEY_PERMISSIONS`` (group or others have any
        access; POSIX only), ``PSEUDONYM_KEY_SHORT``.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError("PSEUDONYM_KEY_FILE_MISSING",
                          f"pseudonym key file {str(path)!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("PSEUDONYM_KEY_FILE_MISSING", f"pseudonym key file {str(path)!r} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError("PSEUDONYM_KEY_PERMISSIONS",
                          f"pseudonym key file {str(path)!r} has mode {stat.S_IMODE(st.st_mode):04o}: group or "
                          f"others can access it; make it private with `chmod 600 {path}`")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("PSEUDONYM_KEY_FILE_MISSING",
                          f"pseudonym key file {str(path)!r} cannot be read as UTF-8 text: "
                          f"{type(exc).__name__}") from None
    return _parse_secret(text, f"pseudonym key file {str(path)!r}", strip=True)


def secret_to_text(secret: bytes) -> str:
    """Key-file text of a secret: itself when it is printable ASCII without spaces, else ``base64:...``."""
    try:
        text = secret.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable() and not any(c.isspace() for c in text) and not text.startswith(_B64_PREFIX):
        return text
    return _B64_PREFIX + base64.b64encode(secret).decode("ascii")


def write_key_file(path: str | os.PathLike, secret: bytes) -> bool:
    """Write ``secret`` to a new key file (0600; a new folder 0700) without ever replacing one.

    The text goes to a private temp file first, which is then hard-linked to
    the final name: ``link(2)`` fails when the name exists, so a key file is
    never overwritten nor seen half-written, and of two processes creating
    the default key at once exactly one wins.

    Returns
    -------
    bool
        True when this call created the file; False when it already held the
        same secret.

    Raises
    ------
    ConfigError
        ``PSEUDONYM_KEY_FILE_EXISTS`` when the file holds another key; the
        errors of :func:`read_key_file` for an existing file.
    """
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secret_to_text(secret) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    if not hmac.compare_digest(read_key_file(path), secret):
        raise ConfigError("PSEUDONYM_KEY_FILE_EXISTS",
                          f"{str(path)!r} already holds another pseudonym key; it is never overwritten: "
                          "choose another file")
    return False


def _create_default(path: Path) -> PseudonymKey:
    """Make the default key file on first use and say where it is (once: later runs find it)."""
    secret = secrets.token_urlsafe(32).encode("ascii")   # 256 random bits as 43 URL-safe characters
    if write_key_file(path, secret):
        log.warning("created a new pseudonym key in %s (mode 0600). Keep it private and back it up: "
                    "stores made with it refuse any other key, and without it new studies get new pseudonyms. "
                    "Set %s to use another key file.", path, ENV_PSEUDONYM_KEY_FILE)
        return PseudonymKey(secret, f"key file {path}", path)
    return PseudonymKey(read_key_file(path), f"key file {path}", path)   # another process made it first


def resolve_key(cfg: KeySettings | None = None, *, create: bool = False) -> PseudonymKey | None:
    """The pseudonym key: ``PETCOHORT_PSEUDONYM_KEY``, else ``PETCOHORT_PSEUDONYM_KEY_FILE``, else the default file.

    Parameters
    ----------
    cfg : KeySettings, optional
        From :func:`settings` (read now when None).
    create : bool
        Create the default key file when it is missing (new stores only:
        a new random key cannot match an existing store).

    Returns
    -------
    PseudonymKey or None
        None when no key is configured and ``create`` is False.

    Raises
    ------
    ConfigError
        Errors of :func:`read_key_file` (a file named by
        ``PETCOHORT_PSEUDONYM_KEY_FILE`` must exist); ``NO_PSEUDONYM_KEY``
        when ``create`` is asked but there is no home folder.
    """
    cfg = settings() if cfg is None else cfg
    if cfg.pseudonym_key is not None:
        return PseudonymKey(cfg.pseudonym_key, f"environment variable {ENV_PSEUDONYM_KEY}")
    if cfg.key_file is not None:
        return PseudonymKey(read_key_file(cfg.key_file), f"key file {cfg.key_file} ({ENV_PSEUDONYM_KEY_FILE})",
                            cfg.key_file)
    path = cfg.default_file
    if path is not None and os.path.lexists(path):
        return PseudonymKey(read_key_file(path), f"key file {path}", path)
    if not create:
        return None
    if path is None:
        raise ConfigError("NO_PSEUDONYM_KEY", f"no pseudonym key: set {ENV_PSEUDONYM_KEY} or "
                                              f"{ENV_PSEUDONYM_KEY_FILE} (no HOME for the default key file)")
    return _create_default(path)


@functools.lru_cache(maxsize=32)
def _pbkdf2(secret: bytes, salt: bytes, iterations: int) -> str:
    # cached: reopening a store in the same process does not pay the KDF again
    return hashlib.pbkdf2_hmac("sha256", secret, _FINGERPRINT_LABEL + salt, iterations).hex()


def key_fingerprint(secret: bytes, *, salt: bytes | None = None) -> dict[str, Any]:
    """A record that identifies ``secret`` without revealing it (stored in the store's root attributes).

    Parameters
    ----------
    secret : bytes
        The pseudonym key.
    salt : bytes, optional
        16 random bytes when None (one salt per store).

    Returns
    -------
    dict
        ``{"kdf": "pbkdf2-sha256", "iterations": int, "salt": hex, "digest": hex}``.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    return {"kdf": _FINGERPRINT_KDF, "iterations": _FINGERPRINT_ITERATIONS, "salt": salt.hex(),
            "digest": _pbkdf2(bytes(secret), salt, _FINGERPRINT_ITERATIONS)}


def fingerprint_matches(secret: bytes, record: object) -> bool:
    """Whether ``secret`` is the key ``record`` (from :func:`key_fingerprint`) was made from.

    Raises
    ------
    StoreError
        ``PSEUDONYM_KEY_MISMATCH`` when the record is malformed (it cannot
        vouch for any key).
    """
    iterations, salt, digest = 0, b"", ""
    try:
        ok = isinstance(record, dict) and record.get("kdf") == _FINGERPRINT_KDF
        iterations = int(record["iterations"]) if ok else 0
        salt = bytes.fromhex(record["salt"]) if ok else b""
        digest = str(record["digest"]) if ok else ""
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok or not 1 <= iterations <= 10_000_000:
        raise StoreError("PSEUDONYM_KEY_MISMATCH", "the store's pseudonym key fingerprint is malformed, so no key "
                                                   "can be checked against it; restore the store's root "
                                                   "zarr.json from a backup")
    return hmac.compare_digest(_pbkdf2(bytes(secret), salt, iterations).encode("ascii"), digest.encode("utf-8"))


