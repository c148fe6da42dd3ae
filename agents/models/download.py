"""Bundle downloads from the hub: streamed with the agent's token, resumed after broken transfers.

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
from pathlib import Path

import requests

from agents.models.errors import DownloadError, ModelError
from shared.bundle import sha256_file
from shared.logs import Progress, kv
from shared.schemas import DesiredModel

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 4 * 1024**3


class BundleDownloader:
    """Downloads desired bundles into ``downloads_dir``.

    Args:
        downloads_dir: where ``<sha256>.part`` files are kept (created when needed).
        hub_token: bearer token for the hub; without it every download is refused.
        timeout_s: connect/read timeout of each request.
        attempts: tries per download; each resumes the partial file with an HTTP Range.
        retry_backoff_s: wait before the first retry, doubled after each failed try.
        stop: set when the agent stops; a download waiting to retry gives up at once.
    """

    def __init__(
        self,
        downloads_dir: Path,
        hub_token: str | None,
        timeout_s: float,
        attempts: int,
        retry_backoff_s: float,
        stop: threading.Event,
    ) -> None:
        self.downloads_dir = downloads_dir
        self._hub_token = hub_token
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._retry_backoff_s = retry_backoff_s
        self._stop = stop

    def download(self, desired: DesiredModel) -> Path:
        """Download the desired bundle to ``downloads/<sha256>.part``; returns that path (complete).

        Raises:
            DownloadError: every try broke off, or the agent is stopping (the partial file is kept).
            ModelError: no token, an HTTP error that will not pass, a bundle over 4 GiB, or a sha256
                mismatch (the partial file is deleted then).
        """
        if not self._hub_token:
            raise ModelError(
                "hub.token is not set in the agent config: cannot download "
                f"{desired.bundle_url}; set it to a token with the agent role"
            )
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        part = self.downloads_dir / f"{desired.bundle_sha256}.part"
        backoff = self._retry_backoff_s
        last_error = ""
        for attempt in range(1, self._attempts + 1):
            try:
                if self._fetch(desired, part):
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

    def _fetch(self, desired: DesiredModel, part: Path) -> bool:
        """One try: append the missing bytes to ``part``. True when the server sent the whole rest."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"Authorization": f"Bearer {self._hub_token}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with requests.get(desired.bundle_url, headers=headers, stream=True, timeout=self._timeout_s) as resp:
            if resp.status_code == 416 and have:
                return True  # nothing left to send: the part is complete (the sha256 check decides)
            if resp.status_code not in (200, 206):
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
