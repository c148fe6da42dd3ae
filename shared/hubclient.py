"""One REST client for the hub's ``/api/v1``: bearer token, JSON, the error envelope, retries.

Used by the operator CLI, the trainer service, ``trainer publish`` and the demo. Every hub error
body is ``{"error": {"code": "...", "message": "..."}}``; :class:`HubError` carries those with the
HTTP status, or status 0 when the hub could not be reached. Idempotent requests (GET, PUT, DELETE)
are retried on connection errors and 502/503/504 with exponential back-off; POSTs are not, since a
retried POST could act twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import requests

API_PREFIX = "/api/v1"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})


class HubError(RuntimeError):
    """The hub refused a request (``status`` 4xx/5xx with its ``code``) or was unreachable (``status`` 0).

    ``str()`` is a sentence for people: the hub's message, its code and the HTTP status.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message if status == 0 else f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message

    @property
    def detail(self) -> str:
        """``HTTP <status> <code>: <message>``, for callers that prefix their own context."""
        return self.message if self.status == 0 else f"HTTP {self.status} {self.code}: {self.message}"

    @property
    def unreachable(self) -> bool:
        """True for a network error or a 5xx: worth retrying later, not a refusal."""
        return self.status == 0 or self.status >= 500

    @classmethod
    def from_response(cls, resp: requests.Response, what: str) -> HubError:
        """The hub's error envelope of ``resp``; for a body without one, its status and text."""
        try:
            err = resp.json()["error"]
            return cls(resp.status_code, str(err["code"]), str(err["message"]))
        except (ValueError, KeyError, TypeError):
            text = resp.text[:300] or resp.reason or "no body"
            return cls(resp.status_code, "http_error", f"{what} answered HTTP {resp.status_code}: {text}")


class HubClient:
    """Requests to one hub, relative to ``/api/v1``.

    Args:
        base_url: the hub's base URL (``http://hub:8080``).
        token: bearer token, sent on every request when given.
        timeout_s: connect/read timeout of a request.
        retries: extra attempts for idempotent requests on connection errors and 502/503/504.
        backoff_s: wait before the first retry, doubling each time.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float | None = None,
        ok: Iterable[int] = (),
        **kwargs: Any,
    ) -> requests.Response:
        """Send ``method path`` (``json=``, ``params=``, ``files=`` as for requests).

        Returns:
            the response, when its status is below 400 or listed in ``ok``.

        Raises:
            HubError: unreachable (status 0) after the retries, or a status >= 400 not in ``ok``.
        """
        method = method.upper()
        what = f"{method} {self.url(path)}"
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        allowed = set(ok)
        last: HubError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                timeout = self.timeout_s if timeout_s is None else timeout_s
                resp = self.session.request(method, self.url(path), timeout=timeout, **kwargs)
            except requests.RequestException as exc:
                last = HubError(0, "unreachable", f"cannot reach the hub at {self.base_url}: {exc}")
                continue
            if resp.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                last = HubError.from_response(resp, what)
                continue
            if resp.status_code >= 400 and resp.status_code not in allowed:
                raise HubError.from_response(resp, what)
            return resp
        assert last is not None
        raise last

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request` and its JSON body (None for 204).

        Raises:
            HubError: as :meth:`request`, or a 2xx without JSON (not the leukonet hub?).
        """
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204:
            return None
        try:
            return resp.json()
        except ValueError:
            raise HubError(
                resp.status_code,
                "not_json",
                f"{method.upper()} {self.url(path)} answered without JSON; "
                f"is {self.base_url} the leukonet hub?",
            ) from None
