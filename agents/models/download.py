"""Bundle downloads from the hub: streamed with the agent's token, resumed after broken transfers.

The token goes to the configured hub only. A ``bundle_url`` whose origin (scheme, host, port,
compared normalised by :func:`url_origin`) is not the hub's, or that carries a user name, is refused
before any request (:class:`~agents.models.errors.ModelRefused`); the request itself is addressed to
the hub's origin with the ``bundle_url``'s path, so no URL parser's reading of an odd ``bundle_url``
can send it elsewhere, and redirects are not followed. The token is asked for before every try
(``hub_token`` may be a function: :meth:`agents.credentials.CredentialSource.api_token`), so a token
rotated by ``leukonet agent rotate-credentials`` meanwhile is used by the next try; a 401 answered
to a token that has been rotated since counts as a broken try, not as a refusal.

A desired bundle is written to ``downloads/<sha256>.part``. The partial file survives failed tries
and agent restarts; every try asks the hub for the missing tail (``Range: bytes=<size>-``), waiting
``retry_backoff_s`` before the first retry and doubling the wait after each (at most 300 s). A server
that ignores the range (HTTP 200) restarts the file; 416 on a partial file means nothing is left to
send. HTTP 408, 429 and 5xx count as broken tries; any other error status ends the download. The
complete file must hash to the desired ``bundle_sha256``, and no bundle may exceed
:data:`MAX_BUNDLE_BYTES`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import requests

from agents.models.errors import DownloadError, ModelError, ModelRefused, Refusal
from shared.bundle import sha256_file
from shared.logs import Progress, kv
from shared.schemas import DesiredModel

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 4 * 1024**3

_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]
#: the hub bearer token, or a function returning the current one (None: no token)
HubToken = str | Callable[[], str | None] | None


def url_origin(url: str) -> Origin:
    """``url``'s origin (scheme, host, port): scheme and host lower-case, the default port filled in.

    Raises:
        ValueError: ``url`` is not an absolute http(s) URL with a host and a valid port.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} has an invalid port ({exc})") from None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def show_origin(origin: Origin) -> str:
    """``scheme://host:port`` (IPv6 hosts in brackets), as refusal messages name an origin."""
    scheme, host, port = origin
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


class BundleDownloader:
    """Downloads desired bundles into ``downloads_dir``.

    Args:
        downloads_dir: where ``<sha256>.part`` files are kept (created when needed).
        hub_token: bearer token for the hub, or a function returning the current one (asked before
            every try); without one every download is refused.
        timeout_s: connect/read timeout of each request.
        attempts: tries per download; each resumes the partial file with an HTTP Range.
        retry_backoff_s: wait before the first retry, doubled after each failed try.
        stop: set when the agent stops; a download waiting to retry gives up at once.
        hub_url: the hub's base URL (the agent config's ``hub.url``); bundles are downloaded from its
            origin only, and without it every download is refused.

    Raises:
        ValueError: ``hub_url`` is not an http(s) URL with a host (the message names ``hub.url``).
    """

    def __init__(
        self,
        downloads_dir: Path,
        hub_token: HubToken,
        timeout_s: float,
        attempts: int,
        retry_backoff_s: float,
        stop: threading.Event,
        hub_url: str | None = None,
    ) -> None:
        self.downloads_dir = downloads_dir
        self._hub_token: Callable[[], str | None]
        if callable(hub_token):
            self._hub_token = hub_token
        else:
            fixed = hub_token
            self._hub_token = lambda: fixed
        self._hub = urlsplit(hub_url.strip()) if hub_url else None
        try:
            self._hub_origin = url_origin(hub_url) if hub_url else None
        except ValueError as exc:
            raise ValueError(f"hub.url: {exc}; set it to the hub's base URL (http://host:port)") from None
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._retry_backoff_s = retry_backoff_s
        self._stop = stop

    def request_url(self, desired: DesiredModel) -> str:
        """The URL a download of ``desired`` requests: the hub's origin with the ``bundle_url``'s path.

        Raises:
            ModelRefused: ``bundle_url`` is not an http(s) URL on the hub's origin, or names a user
                (reason :attr:`Refusal.FOREIGN_ORIGIN`; no request was made).
            ModelError: this downloader was given no hub URL.
        """
        if self._hub is None or self._hub_origin is None:
            raise ModelError(
                f"no hub URL was given to the bundle downloader: refusing to download {desired.bundle_url} "
                "(the hub token goes to the hub only); pass the agent config's hub.url as hub_url"
            )
        hub = show_origin(self._hub_origin)
        try:
            origin = url_origin(desired.bundle_url)
        except ValueError as exc:
            raise ModelRefused(
                f"bundle_url refused: {exc}; bundles are downloaded only from the hub at {hub} "
                "(hub.url in the agent config)",
                Refusal.FOREIGN_ORIGIN,
            ) from None
        parts = urlsplit(desired.bundle_url.strip())
        if origin != self._hub_origin:
            raise ModelRefused(
                f"bundle_url {desired.bundle_url!r} is on {show_origin(origin)}, not on the hub at {hub} "
                "(hub.url in the agent config): refused, nothing was requested and the hub token was not "
                "sent; desire bundles through this hub, or set hub.url to the hub that serves them",
                Refusal.FOREIGN_ORIGIN,
            )
        if parts.username is not None or parts.password is not None:
            raise ModelRefused(
                f"bundle_url {desired.bundle_url!r} names a user before its host: refused, nothing was "
                f"requested; the hub at {hub} never publishes such URLs, so this desired state is forged",
                Refusal.FOREIGN_ORIGIN,
            )
        return SplitResult(self._hub.scheme, self._hub.netloc, parts.path or "/", parts.query, "").geturl()

    def download(self, desired: DesiredModel) -> Path:
        """Download the desired bundle to ``downloads/<sha256>.part``; returns that path (complete).

        Raises:
            ModelRefused: ``bundle_url`` is not on the hub's origin (see :meth:`request_url`).
            DownloadError: every try broke off, or the agent is stopping (the partial file is kept).
            ModelError: no token, no hub URL, an HTTP error that will not pass (a redirect included), a
                bundle over 4 GiB, or a sha256 mismatch (the partial file is deleted then).
        """
        url = self.request_url(desired)
        if not self._hub_token():
            raise ModelError(
                f"no hub API token: cannot download {desired.bundle_url}; enroll the agent (`leukonet "
                "agent enroll`), or set hub.token in the agent config to a token with the agent role"
            )
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        part = self.downloads_dir / f"{desired.bundle_sha256}.part"
        backoff = self._retry_backoff_s
        last_error = ""
        for attempt in range(1, self._attempts + 1):
            try:
                if self._fetch(desired, url, part):
                    break
                last_error = "connection closed before the end of the bundle"
            except (requests.RequestException, OSError) as exc:
                last_error = str(exc)
            if attempt == self._attempts:
                raise DownloadError(
                    f"download of {desired.bundle_url} failed after {attempt} tries: {last_error} "
                    f"({part.stat().st_size if part.exists() else 0} bytes kept in {part} for the next try)"
                )
            log.warning(
                kv(
                    "download_interrupted",
                    url=desired.bundle_url,
                    attempt=attempt,
                    have_bytes=part.stat().st_size if part.exists() else 0,
                    error=last_error,
                    retry_in_s=backoff,
                )
            )
            if self._stop.wait(backoff):
                raise DownloadError(f"download of {desired.bundle_url} interrupted: the agent is stopping")
            backoff = min(backoff * 2, 300.0) if backoff else 0.0
        actual = sha256_file(part)
        if actual != desired.bundle_sha256:
            part.unlink(missing_ok=True)
            raise ModelError(
                f"downloaded bundle sha256 {actual} differs from the desired "
                f"{desired.bundle_sha256} ({desired.bundle_url})"
            )
        return part

    def _fetch(self, desired: DesiredModel, url: str, part: Path) -> bool:
        """One try: append the missing bytes to ``part``. True when the server sent the whole rest.

        ``url`` is :meth:`request_url`'s, on the hub's origin; redirects are not followed, so the
        token is sent to that origin only.
        """
        have = part.stat().st_size if part.exists() else 0
        token = self._hub_token()
        if not token:
            raise ModelError(f"no hub API token for {desired.bundle_url} any more (credentials removed?)")
        headers = {"Authorization": f"Bearer {token}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with requests.get(
            url, headers=headers, stream=True, timeout=self._timeout_s, allow_redirects=False
        ) as resp:
            if resp.status_code == 416 and have:
                return True  # nothing left to send: the part is complete (the sha256 check decides)
            if resp.is_redirect:
                raise ModelError(
                    f"download of {desired.bundle_url} refused: the server answered HTTP {resp.status_code} "
                    f"redirecting to {resp.headers.get('Location')!r}; bundles are downloaded only from the "
                    f"hub itself, which serves them directly (is hub.url the hub's final address?)"
                )
            if resp.status_code not in (200, 206):
                if resp.status_code == 401 and self._hub_token() != token:
                    raise requests.HTTPError(
                        f"HTTP 401 from {desired.bundle_url}: the API token was rotated meanwhile"
                    )
                if resp.status_code in (408, 429) or resp.status_code >= 500:
                    raise requests.HTTPError(f"HTTP {resp.status_code} from {desired.bundle_url}")
                part.unlink(missing_ok=True)
                raise ModelError(
                    f"download of {desired.bundle_url} failed: HTTP {resp.status_code} {resp.text[:200]!r}"
                )
            if resp.status_code == 200:
                have = 0  # the server ignored the range: start over
            remaining = int(resp.headers.get("Content-Length") or 0)
            expected_total = have + remaining if remaining else 0
            if expected_total > MAX_BUNDLE_BYTES:
                raise ModelError(f"{desired.bundle_url}: bundle larger than 4 GiB; refusing it")
            # Keep what arrived before a connection broke (urllib3 would otherwise raise and drop the
            # partly read chunk); a short body is detected below and resumed by the next try.
            resp.raw.enforce_content_length = False
            received = 0
            with (
                open(part, "r+b" if have else "wb") as out,
                Progress(
                    expected_total, f"download {desired.model_name} {desired.model_version}", log, unit="B"
                ) as bar,
            ):
                out.seek(have)
                out.truncate()
                bar.update(have)
                try:
                    for chunk in resp.iter_content(1 << 18):
                        received += len(chunk)
                        if have + received > MAX_BUNDLE_BYTES:
                            raise ModelError(f"{desired.bundle_url}: bundle larger than 4 GiB; refusing it")
                        out.write(chunk)
                        bar.update(len(chunk))
                finally:
                    out.flush()
                    os.fsync(out.fileno())
        return not remaining or received >= remaining
