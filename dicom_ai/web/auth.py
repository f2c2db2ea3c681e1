"""Who is asking, and may they: logins and bearer tokens from `[http]`, sessions, roles and CSRF tokens.

Secrets in the config are argon2 hashes (argon2-cffi); a login makes a server-side session (a random id in an
HttpOnly, SameSite=Strict cookie; a restart logs everyone out). Two roles: `read-only` views, `operator` also acts.
Every state-changing request made with a session cookie must carry the session's CSRF token (form field
`csrf_token` or header `X-CSRF-Token`); bearer-token requests carry no cookie and need none. `auth = "open"` (a
lab) lets anyone in as the operator "anonymous"; CSRF is still required there, tied to a cookie of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dicom_ai.config import HttpSettings

SESSION_COOKIE = "dicomai_session"
CSRF_COOKIE = "dicomai_csrf"  # open mode only: there is no session to hold the token
OPERATOR = "operator"
READ_ONLY = "read-only"

_hasher = PasswordHasher()
# verified against when the user is unknown, so that a wrong name costs as much time as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_secret(secret: str) -> str:
    """The argon2id hash to put in `[http.users.NAME] password_hash` or `[http.tokens.NAME] token_hash`."""
    return _hasher.hash(secret)


@dataclass(frozen=True)
class Identity:
    name: str  # "user:alice", "token:prometheus", "anonymous": what the audit trail records
    role: str
    csrf_token: str | None  # None for bearer tokens (no cookie, no CSRF)

    @property
    def may_act(self) -> bool:
        return self.role == OPERATOR


def _verify(hashed: str, secret: str) -> bool:
    try:
        return _hasher.verify(hashed, secret)
    except (VerificationError, InvalidHashError):
        return False


class Authenticator:
    """Checks passwords and tokens, and keeps the sessions of one running node."""

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self._sessions: dict[str, tuple[Identity, float]] = {}
        self._tokens: dict[str, Identity] = {}  # sha256 of a token already verified -> its identity
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.settings.auth == "open"

    def login(self, name: str, password: str) -> str | None:
        """A new session id for a right name and password, else None."""
        user = self.settings.users.get(name)
        if not _verify(user.password_hash if user else _DUMMY_HASH, password) or user is None:
            return None
        session_id = secrets.token_urlsafe(32)
        identity = Identity(f"user:{name}", user.role, secrets.token_urlsafe(32))
        with self._lock:
            self._sessions[session_id] = (identity, time.monotonic() + self.settings.session_hours * 3600)
        return session_id

    def logout(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def from_session(self, session_id: str | None) -> Identity | None:
        if not session_id:
            return None
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._sessions[session_id]
                return None
            return entry[0]

    def from_token(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            if digest in self._tokens:
                return self._tokens[digest]
        for name, entry in self.settings.tokens.items():
            if _verify(entry.token_hash, token):
                identity = Identity(f"token:{name}", entry.role, None)
                with self._lock:
                    self._tokens[digest] = identity
                return identity
        return None

    @staticmethod
    def anonymous(csrf_token: str) -> Identity:
        return Identity("anonymous", OPERATOR, csrf_token)

    @staticmethod
    def csrf_matches(identity: Identity, presented: str | None) -> bool:
        if identity.csrf_token is None:
            return True  # a bearer token: no cookie was used, so no cross-site request can ride on it
        return bool(presented) and hmac.compare_digest(identity.csrf_token, presented or "")
