"""Who may use the search page: with a page token configured, every /api/* route and every
thumbnail needs it, as `Authorization: Bearer <token>` (scripts) or as the session cookie the
page gets once a person has typed the token in (browsers: an <img> cannot send a header). The
page's own HTML and script carry no data and load without it, so the page can ask for it.
Without a token (the page on loopback) everyone on this machine may use it.

The token comes from the environment (IMGSEARCH_PAGE_TOKEN) or a file, never from a flag (flags
show in `ps`). The cookie holds an HMAC of the token, not the token, and is HttpOnly and
SameSite=Strict: page scripts cannot read it and other sites cannot make a browser send it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from starlette.requests import Request

from imgsearch.errors import ConfigError

PAGE_TOKEN_ENV = "IMGSEARCH_PAGE_TOKEN"
SESSION_COOKIE = "imgsearch_page_session"


def page_token(token_file: str = "", environ: Mapping[str, str] | None = None) -> str:
    """The page token from `token_file` (its first line) or IMGSEARCH_PAGE_TOKEN; "" if none."""
    environ = os.environ if environ is None else environ
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the page token file {token_file}: {exc.strerror}"
            ) from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"the page token file {token_file} is empty")
        return token
    return environ.get(PAGE_TOKEN_ENV, "").strip()


class PageAccess:
    """Checks requests against the page token; with no token every request may pass."""

    def __init__(self, token: str) -> None:
        self.required = bool(token)
        self._token = token.encode()
        self._session = hmac.new(self._token, b"imgsearch page session", hashlib.sha256).hexdigest()

    def allows(self, request: Request) -> bool:
        if not self.required:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.matches(given.strip()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token)

    @property
    def session_cookie(self) -> str:
        """The cookie value a browser keeps once it has shown the token."""
        return self._session
