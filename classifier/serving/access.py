"""Who may call what: the page's login (--auth), programs' keys (--api-keys) and admins' keys (--admin-keys).

One rule for every door (the HTTP routes, the guard in front of them, the gRPC port): it reads an Authorization
value (an HTTP header or gRPC metadata) and imports no transport.
- Nothing set: everyone may call; admin actions need --open-admin.
- `Basic base64(user:password)` with --auth's login, or Gradio's login cookie (the guard checks that): everything.
- `Bearer <key>`: a key of --api-keys calls (classify, explain, the protocols, Gradio's API); a key of
  --admin-keys also changes what is served (reload, load, unload, a new model list).
Keys are held as their SHA-256 only and compared in constant time; a key file is read again on SIGHUP.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

log = logging.getLogger(__name__)

HASHED = "sha256:"  # a key file's line that holds a key's SHA-256 (hex) rather than the key
# The 403 of an admin action (reload, load, unload, the Train tab's "Serve this model") on a server with no login.
ADMIN_NEEDS_LOGIN = ("this action changes what the server serves, so it needs the login: start the server with "
                     "--auth USER:PASS or --admin-keys FILE (or, on a machine of your own, --open-admin)")
NOT_ADMIN = "this action changes what the server serves: it needs the login or a key of --admin-keys"
LOGIN_REQUIRED = "authentication required"


class Role(IntEnum):
    """What an Authorization value lets its sender do; each role may do what the ones below it may."""

    NONE = 0
    CALLER = 1  # classify, explain, the protocols' inference and metadata
    ADMIN = 2  # also change what is served


class KeyFileError(ValueError):
    """A key file that cannot be read, or a malformed line of one: the message names the file (and the line)."""


class KeyFile:
    """Keys read from a file: one a line, or `sha256:<64 hex digits>` of one (so that the file need not hold the
    key itself); blank lines and lines starting with # are skipped. Only the digests are kept."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.digests = read_digests(self.path)

    def reload(self) -> None:
        """Reads the file again; an unreadable or malformed file keeps the keys held (and says why in the log)."""
        try:
            self.digests = read_digests(self.path)
        except KeyFileError as exc:
            log.error("%s was not read again, its previous keys still hold: %s", self.path, exc)
        else:
            log.info("%s read again: %d keys", self.path, len(self.digests))

    def holds(self, key: str) -> bool:
        """Whether the key is one of the file's, in time that does not depend on which key or how close."""
        digest = hashlib.sha256(key.encode()).digest()
        found = False
        for held in self.digests:
            found |= secrets.compare_digest(held, digest)
        return found


def read_digests(path: Path) -> list[bytes]:
    """The SHA-256 digests of a key file's keys; KeyFileError for a file that cannot be read, or naming the line
    of a malformed hash."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    digests = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(HASHED):
            try:
                digest = bytes.fromhex(line[len(HASHED):])
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise KeyFileError(f"key file {path}, line {number}: {HASHED} must be followed by 64 hex digits")
            digests.append(digest)
        else:
            digests.append(hashlib.sha256(line.encode()).digest())
    return digests


@dataclass
class Access:
    """The server's access rule. login: --auth's (user, password); api_keys, admin_keys: the key files;
    open_admin: admin actions without any login (a machine of one's own)."""

    login: tuple[str, str] | None = None
    api_keys: KeyFile | None = None
    admin_keys: KeyFile | None = None
    open_admin: bool = False

    @property
    def closed(self) -> bool:
        """Whether a call needs a login or a key (else anyone may call)."""
        return bool(self.login or self.api_keys or self.admin_keys)

    def role(self, authorization: str) -> Role:
        """What this Authorization value lets its sender do (NONE on an open server too: see may_call)."""
        scheme, _, credential = authorization.strip().partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "basic" and self.login and basic_login_ok(credential, self.login):
            return Role.ADMIN
        if scheme == "bearer" and credential:
            if self.admin_keys and self.admin_keys.holds(credential):
                return Role.ADMIN
            if self.api_keys and self.api_keys.holds(credential):
                return Role.CALLER
        return Role.NONE

    def may_call(self, authorization: str) -> bool:
        return not self.closed or self.role(authorization) >= Role.CALLER

    def admin_refusal(self, authorization: str) -> tuple[int, str] | None:
        """None if the sender may change what is served; else the HTTP status and message: 401 without a login
        or key, 403 with a program's key, or on a server with no way to log in as an admin."""
        if self.login is None and self.admin_keys is None:
            if self.open_admin and self.may_call(authorization):
                return None
            if not self.may_call(authorization):
                return 401, LOGIN_REQUIRED
            return 403, ADMIN_NEEDS_LOGIN
        role = self.role(authorization)
        if role == Role.ADMIN:
            return None
        return (403, NOT_ADMIN) if role == Role.CALLER else (401, LOGIN_REQUIRED)

    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401: Bearer where keys are taken, Basic where the login is (both in one
        value, as RFC 9110 allows)."""
        found = ['Bearer realm="classifier"'] if self.api_keys or self.admin_keys else []
        return ", ".join(found + (['Basic realm="classifier"'] if self.login or not found else []))

    def reload_keys(self) -> None:
        """SIGHUP's: each key file read again."""
        for keys in (self.api_keys, self.admin_keys):
            if keys is not None:
                keys.reload()


def basic_login_ok(encoded: str, login: tuple[str, str]) -> bool:
    """Whether base64(user:password) is the login, compared in constant time."""
    try:
        user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
    except ValueError:
        return False
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a 500).
    return secrets.compare_digest(user, login[0].encode()) & secrets.compare_digest(password, login[1].encode())
