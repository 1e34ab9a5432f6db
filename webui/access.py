"""Who may use the search page: with a page token configured, every /api/* route and every
thumbnail needs it, as `Authorization: Bearer <token>` (scripts) or as the session cookie the
page gets once a person has typed the token in (browsers: an <img> cannot send a header). The
page's own HTML and script carry no data and load without it, so the page can ask for it.
Without a token (the page on loopback) everyone on this machine may use it.

The token comes from the environment (IMGSEARCH_PAGE_TOKEN) or a file, never from a flag (flags
show in `ps`). The cookie holds an HMAC of the token, not the token, and is HttpOnly and
SameSite=Strict: page scripts cannot read it and other sites cannot make a browser send it.
Wrong tokens are counted per client address, and an address that sends too many is refused for
a while (`WrongTokens`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
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

    @staticmethod
    def presents_credentials(request: Request) -> bool:
        """Whether the request offers a token or a session (a wrong one counts as a guess)."""
        return bool(request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE))

    @property
    def session_cookie(self) -> str:
        """The cookie value a browser keeps once it has shown the token."""
        return self._session


class WrongTokens:
    """Wrong tokens per client address: past `limit` within `window_s`, that address is refused
    (429) until the window has passed, whatever it sends, so a token cannot be guessed at the
    page's speed. Bounded: at most `max_clients` addresses are remembered."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._clock = clock
        self._wrong: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds before `client` may try again; 0 when it may now."""
        with self._lock:
            times = self._recent(client)
            if len(times) < self.limit:
                return 0.0
            return max(0.0, times[0] + self.window_s - self._clock())

    def record(self, client: str) -> None:
        with self._lock:
            if client not in self._wrong and len(self._wrong) >= self.max_clients:
                self._wrong.pop(next(iter(self._wrong)))  # the longest-remembered address
            self._recent(client).append(self._clock())

    def _recent(self, client: str) -> deque[float]:
        times = self._wrong.setdefault(client, deque())
        while times and times[0] <= self._clock() - self.window_s:
            times.popleft()
        return times
