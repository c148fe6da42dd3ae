"""The evidence uploader: sends the queued evidence to the hub, one HTTP PUT per image.

:class:`EvidenceUploader` runs ``upload_concurrency`` supervised loops. Each takes the oldest due
row of the :class:`~agents.evidence.queue.EvidenceQueue` that no other loop holds and sends it with
``PUT /api/v1/evidence/<sha256>`` and the agent's current API token (asked for before every upload:
tokens rotate). A row is deleted only once the hub answered 2xx. An unreachable hub, 401, 408, 429
and 502-504 pause every upload (waits double with jitter from ``retry_min_s`` to ``retry_max_s``);
any other 5xx makes that item wait alone, dropped after ``max_attempts``; any other 4xx is a
permanent refusal: the item is dropped, with the hub's reason in the log, so one bad item never
blocks the queue. Any other error is counted and logged, and the item waits for its next try.

A server may answer a refusal (413 too large, 401) before reading a large body and close the
connection, which the client sees as a broken connection, like a hub that is down. So after one,
the uploader sends the same PUT with an empty body: no answer means the hub is down (pause); 2xx,
that the hub has the image; ``400 empty_body``, that the hub is up and takes the token but broke
off this item (it waits alone, like a 5xx); any other answer is handled as above.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from agents.config import EvidenceConfig
from agents.evidence.queue import EvidenceQueue, EvidenceRow
from agents.outbox import OutboxError
from shared.hubclient import HubClient, HubError
from shared.logs import kv
from shared.loops import Loops

log = logging.getLogger(__name__)

#: hub answers that pause every upload: the hub (or the way to it) is not taking uploads right now
PAUSE_STATUSES = frozenset({0, 401, 408, 429, 502, 503, 504})
IDLE_WAIT_S = 1.0


@dataclass
class UploadStats:
    """What the uploader did since start (read by tests, logs and metrics)."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    #: items dropped: refused by the hub for good, or failing past max_attempts
    dropped: Counter[str] = field(default_factory=Counter)
    #: failed tries by reason (``unreachable``, ``http_503``, ``no_token``, ``error``...)
    failures: Counter[str] = field(default_factory=Counter)


class EvidenceUploader:
    """Uploads the queued evidence to the hub on ``upload_concurrency`` supervised loops.

    Args:
        queue: where evidence waits.
        hub_url: the hub's base URL (the agent config's ``hub.url``).
        api_token: returns the agent's current API token (None: not enrolled, no ``hub.token``).
        config: the ``evidence`` section.
        loops: where the upload loops register (``evidence-upload-<i>``).
        rng: jitter in [0, 1) (tests pass their own).
        clock: wall-clock seconds, for the per-item waits kept in the queue (tests pass their own);
            the pause of every upload runs on the monotonic clock.
    """

    def __init__(
        self,
        queue: EvidenceQueue,
        hub_url: str,
        api_token: Callable[[], str | None],
        config: EvidenceConfig,
        loops: Loops | None = None,
        *,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.hub_url = hub_url
        self.api_token = api_token
        self.config = config
        self.loops = loops or Loops()
        self.stats = UploadStats()
        self._rng = rng
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._claimed: set[int] = set()
        self._paused_until = 0.0  # time.monotonic() before which no upload starts
        self._streak = 0  # failed tries in a row that paused every upload
        self._threads: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.config.upload_concurrency):
            name = f"evidence-upload-{i}"
            self._threads.append(self.loops.spawn(name, partial(self._loop, name), self._stop))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loops (an upload under way ends within ``evidence.timeout_s``)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def wake(self) -> None:
        """New evidence was committed: look now instead of at the next idle check."""
        self._wake.set()

    # --- one upload ---------------------------------------------------------------------------

    def _loop(self, name: str) -> None:
        client = HubClient(self.hub_url, timeout_s=self.config.timeout_s, retries=0)
        while not self._stop.is_set():
            wait = self._paused_until - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
                continue
            if not self.upload_next(client):
                self._wake.wait(self._idle_wait())
                self._wake.clear()
            self.loops.beat(name)

    def _idle_wait(self) -> float:
        due = self.queue.due_at()
        if due is None:
            return IDLE_WAIT_S
        return min(max(due - self._clock(), 0.05), IDLE_WAIT_S)

    def upload_next(self, client: HubClient) -> bool:
        """Try the oldest due evidence not taken by another loop; False when none is due.

        Never raises: any error is counted, logged, and the item waits for its next try.
        """
        with self._lock:
            row = self.queue.next_due(self._clock(), self._claimed)
            if row is None:
                return False
            self._claimed.add(row.seq)
        try:
            self._upload(client, row)
        except Exception as exc:  # noqa: BLE001 - one item must never stop the uploader
            self.stats.failures["error"] += 1
            log.exception(kv("evidence_upload_error", sha256=row.evidence.sha256, error=repr(exc)[:300]))
            self._retry_item(row, f"unexpected error: {exc!r}")
        finally:
            with self._lock:
                self._claimed.discard(row.seq)
        return True

    def _upload(self, client: HubClient, row: EvidenceRow) -> None:
        ev = row.evidence
        token = self.api_token()
        if not token:
            self.stats.failures["no_token"] += 1
            self._pause(
                "no hub API token: enroll the agent (`leukonet agent enroll`) or set hub.token; evidence "
                "waits in the queue"
            )
            return
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": ev.content_type,
            "X-Evidence-Kind": ev.kind,
            "X-Content-SHA256": ev.content_sha256,
        }
        try:
            resp = client.request(
                "PUT", f"/evidence/{ev.sha256}", data=ev.body, headers=headers, allow_redirects=False
            )
        except HubError as exc:
            if exc.status == 0:  # the hub is down, or it refused before reading the body and hung up
                probed = self._probe(client, row, headers)
                if probed is None:  # the hub has the image
                    return
                exc = probed
                if exc.status == 400 and exc.code == "empty_body":  # up, token good, the item is new
                    self.stats.failures["connection_broken"] += 1
                    self._retry_item(
                        row,
                        f"the hub broke the connection while receiving {len(ev.body)} bytes (over its "
                        "evidence.max_bytes?)",
                    )
                    return
            self._refused(row, exc)
            return
        if resp.status_code // 100 != 2:  # a redirect: hub.url is not the hub's final address
            self.stats.failures[f"http_{resp.status_code}"] += 1
            self._pause(
                f"the hub answered HTTP {resp.status_code} (redirect to {resp.headers.get('Location')!r}); "
                "set hub.url to the hub's own address"
            )
            return
        self._uploaded(row)

    def _probe(self, client: HubClient, row: EvidenceRow, headers: dict[str, str]) -> HubError | None:
        """After a broken connection: the same PUT with an empty body, which the hub answers without
        a body to refuse. Returns its error (status 0: the hub is down), or None when it answered
        2xx: the hub has the image (the item is done)."""
        try:
            client.request(
                "PUT", f"/evidence/{row.evidence.sha256}", data=b"", headers=headers, allow_redirects=False
            )
        except HubError as exc:
            return exc
        self._uploaded(row)
        return None

    def _uploaded(self, row: EvidenceRow) -> None:
        ev = row.evidence
        self.queue.done(row.seq)
        self.stats.uploaded += 1
        self.stats.uploaded_bytes += len(ev.body)
        with self._lock:
            resumed, self._streak, self._paused_until = self._streak, 0, 0.0
        if resumed:
            log.info(kv("evidence_upload_resumed", after_failures=resumed))
        log.debug(kv("evidence_uploaded", sha256=ev.sha256, kind=ev.kind, bytes=len(ev.body)))

    def _refused(self, row: EvidenceRow, exc: HubError) -> None:
        reason = "unreachable" if exc.status == 0 else f"http_{exc.status}"
        self.stats.failures[reason] += 1
        if exc.status in PAUSE_STATUSES:
            self._pause(exc.detail)
        elif exc.status >= 500:
            self._retry_item(row, exc.detail)
        else:
            self._drop(row, reason, exc.detail)

    def _delay(self, tries: int) -> float:
        """Exponential back-off from retry_min_s, capped at retry_max_s, with jitter (half to full)."""
        base = min(self.config.retry_min_s * 2 ** min(tries - 1, 30), self.config.retry_max_s)
        return float(base * (0.5 + self._rng() / 2))

    def _pause(self, why: str) -> None:
        with self._lock:
            self._streak += 1
            delay = self._delay(self._streak)
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            streak = self._streak
        if streak == 1 or streak & (streak - 1) == 0:  # the first failure, then at 2, 4, 8... in a row
            log.warning(
                kv("evidence_upload_paused", reason=why, failures_in_a_row=streak, retry_in_s=f"{delay:.1f}")
            )

    def _retry_item(self, row: EvidenceRow, why: str) -> None:
        tries = row.attempts + 1
        if tries >= self.config.max_attempts:
            self._drop(row, "max_attempts", f"{tries} tries failed, the last: {why}")
            return
        try:
            self.queue.retry(row.seq, self._clock() + self._delay(tries), why)
        except OutboxError as exc:
            log.error(kv("evidence_retry_not_recorded", sha256=row.evidence.sha256, error=exc))
        log.warning(kv("evidence_upload_failed", sha256=row.evidence.sha256, tries=tries, error=why))

    def _drop(self, row: EvidenceRow, reason: str, why: str) -> None:
        try:
            self.queue.done(row.seq)
        except OutboxError as exc:  # the row stays and is tried again later
            log.error(kv("evidence_drop_not_recorded", sha256=row.evidence.sha256, error=exc))
            return
        self.stats.dropped[reason] += 1
        log.warning(
            kv(
                "evidence_dropped",
                sha256=row.evidence.sha256,
                kind=row.evidence.kind,
                reason=why,
                action="the hub will not show this image; its result was sent",
            )
        )
