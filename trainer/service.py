"""``leukonet trainer serve``: run the training jobs an operator queues on the hub, one at a time.

The loop (:class:`TrainerService`):

1. claim the oldest queued job (``POST /api/v1/training-jobs/claim``); nothing queued: wait
   ``poll_interval_s`` and ask again;
2. resolve the job's data set and checkpoint **inside** this trainer's ``data_root`` and
   ``checkpoint_root`` (a spec cannot point the trainer at other files), in a fresh work folder
   ``work_root/<job id>``;
3. run ``leukonet trainer run`` for it as a child process, *without* publishing: the child's
   structured ``progress`` log lines are forwarded to the hub (``/progress``) at most every
   ``progress_interval_s`` and at every phase change; each answer says whether the operator asked
   to cancel, in which case the child is stopped;
4. only when the child succeeded (bundle built, parity held): publish the bundle, then tell the
   hub (``/finish``), which checks the bundle is in its registry. Anything failing on the way is
   reported with ``/fail`` and its error; nothing was published, because publishing is the last
   step and the hub's upload is all-or-nothing.

A child process, not a thread: TensorFlow holds memory and threads for the whole process, a
crash or an out-of-memory kill in training must not take the service down, and stopping a job
is a signal. Secrets reach the child by environment, never argv.

The hub's job API is :mod:`trainer.jobs_client`; the child's arguments, output and stopping are
:mod:`trainer.job_child`; this module confines a job's paths and runs the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.hubclient import HubClient
from shared.logs import kv
from shared.training import JobFailure, JobFinish, JobProgress, TrainingJobSpec
from trainer.config import TrainerConfig
from trainer.job_child import StderrForwarder, run_args, terminate
from trainer.jobs_client import HubUnavailable, JobError, JobsClient

log = logging.getLogger(__name__)


def inside(root: Path | None, relative: str, what: str, setting: str) -> Path:
    """``root / relative``, resolved, when it stays inside ``root`` (symlinks included).

    Raises:
        JobError: no root configured, or the path escapes it.
    """
    if root is None:
        raise JobError(
            f"this trainer has no {setting} configured, so it cannot resolve the {what} "
            f"{relative!r}; set LEUKONET_TRAINER_{setting.upper()}"
        )
    base = root.resolve()
    path = (base / relative).resolve()
    if path != base and base not in path.parents:
        raise JobError(f"{what} {relative!r} resolves outside the trainer's {setting} {base}")
    return path


class TrainerService:
    """Claims and runs jobs until :meth:`stop`; see the module docstring."""

    def __init__(
        self,
        config: TrainerConfig,
        client: JobsClient | None = None,
        child_command: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        if not config.hub_url or config.token is None:
            raise ValueError(
                "trainer serve needs hub_url and token (LEUKONET_TRAINER_HUB_URL, LEUKONET_TRAINER_TOKEN)"
            )
        if config.signing_key is None:
            raise ValueError(
                "trainer serve needs signing_key (LEUKONET_TRAINER_SIGNING_KEY); "
                "create one with `leukonet trainer keygen`"
            )
        self.config = config
        self.client = client or JobsClient(
            HubClient(config.hub_url, config.token.get_secret_value()), config.worker
        )
        self.child_command = child_command or (
            lambda args: [sys.executable, "-m", "shared.cli", "trainer", *args]
        )
        self._stop = threading.Event()
        self._stop_reason = ""
        self.jobs_done = 0

    def stop(self, reason: str = "stopped") -> None:
        """Stop claiming; a running job is stopped and reported failed with ``reason``."""
        self._stop_reason = reason
        self._stop.set()

    def serve(self, max_jobs: int | None = None) -> int:
        """Run jobs until stopped (or ``max_jobs`` jobs ran); returns the number of jobs run."""
        log.info(
            kv(
                "trainer_serve",
                hub=self.config.hub_url,
                worker=self.config.worker,
                data_root=self.config.data_root,
                work_root=self.config.work_root,
            )
        )
        while not self._stop.is_set() and (max_jobs is None or self.jobs_done < max_jobs):
            try:
                job = self.client.claim()
            except HubUnavailable as exc:
                log.warning(kv("hub_unavailable", error=exc, retry_s=self.config.poll_interval_s))
                job = None
            if job is None:
                self._stop.wait(self.config.poll_interval_s)
                continue
            self.run_job(job)
            self.jobs_done += 1
        return self.jobs_done

    def run_job(self, job: dict[str, Any]) -> str:
        """Run one claimed job to its end; returns the state reported (succeeded, failed, cancelled)."""
        job_id = str(job["job_id"])
        started = time.monotonic()
        log.info(kv("job_start", job=job_id, spec=json.dumps(job.get("spec"), sort_keys=True)))
        try:
            spec = TrainingJobSpec.model_validate(job["spec"])
            finish = self._train_and_publish(job_id, spec, started)
        except _Cancelled as exc:
            if not exc.by_operator:
                self._report_failure(job_id, str(exc))
                return "failed"
            self._report(job_id, JobFailure(error=str(exc), cancelled=True))
            log.warning(kv("job_cancelled", job=job_id, reason=exc))
            return "cancelled"
        except (JobError, ValidationError, OSError, HubUnavailable) as exc:
            self._report_failure(job_id, str(exc))
            return "failed"
        except Exception as exc:  # noqa: BLE001 - a bug must still end the job, not leave it running
            log.exception(kv("job_crashed", job=job_id))
            self._report_failure(job_id, f"trainer service error: {type(exc).__name__}: {exc}")
            return "failed"
        log.info(
            kv(
                "job_done",
                job=job_id,
                model=f"{finish.model_name}:{finish.model_version}",
                sha256=finish.sha256[:16],
                elapsed_s=f"{finish.elapsed_s:.1f}",
            )
        )
        return "succeeded"

    def _report_failure(self, job_id: str, error: str) -> None:
        log.error(kv("job_failed", job=job_id, error=error))
        self._report(job_id, JobFailure(error=error))

    def _report(self, job_id: str, failure: JobFailure) -> None:
        """``/fail``, retried a few times while the hub is unreachable."""
        for attempt in range(3):
            try:
                self.client.fail(job_id, failure)
                return
            except HubUnavailable as exc:
                log.warning(kv("fail_report_retry", job=job_id, attempt=attempt + 1, error=exc))
                self._stop.wait(min(self.config.poll_interval_s, 5.0))

    def _train_and_publish(self, job_id: str, spec: TrainingJobSpec, started: float) -> JobFinish:
        from trainer.publish import publish

        data = inside(self.config.data_root, spec.dataset, "dataset", "data_root")
        if not data.is_dir():
            raise JobError(
                f"dataset {spec.dataset!r} is not a folder under the trainer's data_root "
                f"({data}); import it there with `leukonet trainer import`"
            )
        checkpoint = (
            inside(self.config.checkpoint_root, spec.checkpoint, "checkpoint", "checkpoint_root")
            if spec.checkpoint
            else None
        )
        work = self.config.work_root / job_id
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        summary = self._run_child(job_id, run_args(spec, data, work, checkpoint))
        if self._cancel_requested(job_id, JobProgress(phase="publish", done=0, total=1)):
            raise _Cancelled("cancelled by the operator before publishing; nothing was published", True)
        try:
            publish(summary["bundle"], str(self.config.hub_url), self._token())
        except Exception as exc:
            raise JobError(f"publishing failed, nothing was published: {exc}") from exc
        # Published: a cancel that arrives now is too late to matter; `finish` says the rest.
        with contextlib.suppress(JobError):
            self._cancel_requested(job_id, JobProgress(phase="publish", done=1, total=1))
        finish = JobFinish(
            model_name=spec.name,
            model_version=spec.version,
            sha256=summary["sha256"],
            metrics=summary.get("metrics", {}),
            parity=summary.get("parity", {}),
            elapsed_s=round(time.monotonic() - started, 2),
        )
        self.client.finish(job_id, finish)
        return finish

    def _token(self) -> str:
        assert self.config.token is not None  # checked in __init__
        return self.config.token.get_secret_value()

    def _cancel_requested(self, job_id: str, progress: JobProgress) -> bool:
        try:
            return self.client.progress(job_id, progress)
        except HubUnavailable as exc:
            log.warning(kv("progress_not_sent", job=job_id, error=exc))
            return False

    def _run_child(self, job_id: str, args: list[str]) -> dict[str, Any]:
        """Run ``trainer run`` for the job, forwarding progress; its JSON summary.

        Raises:
            _Cancelled: the operator cancelled, or the service is stopping.
            JobError: the child failed (the message holds its error line).
        """
        env = {
            **os.environ,
            "LEUKONET_TRAINER_SIGNING_KEY": str(self.config.signing_key),
            "LEUKONET_TRAINER_THREADS": str(self.config.threads),
            "LEUKONET_TRAINER_LOG_LEVEL": self.config.log_level,
            "PYTHONUNBUFFERED": "1",
        }
        for key in ("LEUKONET_TRAINER_TOKEN", "LEUKONET_TRAINER_HUB_URL"):
            env.pop(key, None)  # the child does not publish; it needs no hub secret
        command = self.child_command(args)
        log.info(kv("job_child", job=job_id, command=" ".join(command)))
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        ) as child:
            assert child.stdout is not None and child.stderr is not None
            stdout = child.stdout
            forwarder = StderrForwarder(child.stderr)
            stdout_lines: list[str] = []
            reader = threading.Thread(
                target=lambda: stdout_lines.extend(
                    raw.decode("utf-8", "replace") for raw in iter(stdout.readline, b"")
                ),
                daemon=True,
            )
            reader.start()
            try:
                reason, by_operator = self._watch(job_id, child, forwarder)
                if reason:
                    terminate(child)
            finally:
                reader.join(timeout=10)
                forwarder.thread.join(timeout=10)
        if reason:
            raise _Cancelled(reason, by_operator)
        if child.returncode != 0:
            raise JobError(f"training failed (exit {child.returncode}): {forwarder.error_line()}")
        try:
            summary: dict[str, Any] = json.loads([ln for ln in stdout_lines if ln.strip()][-1])
        except (IndexError, ValueError) as exc:
            raise JobError("training ended without its JSON summary on stdout") from exc
        return summary

    def _watch(
        self, job_id: str, child: subprocess.Popen[bytes], forwarder: StderrForwarder
    ) -> tuple[str, bool]:
        """Forward progress until the child exits: ``("", False)``, or why it must stop and by whom."""
        last_sent = 0.0
        while child.poll() is None:
            self._stop.wait(0.5)
            if self._stop.is_set():
                return (
                    f"the trainer service was {self._stop_reason} while the job ran; nothing was published"
                ), False
            progress, phase_changed = forwarder.take()
            now = time.monotonic()
            due = now - last_sent >= self.config.progress_interval_s
            if progress is None and due:  # a heartbeat, and the chance to hear of a cancel
                progress = forwarder.latest or JobProgress(phase="starting", done=0, total=0)
            if progress is not None and (phase_changed or due):
                last_sent = now
                try:
                    if self._cancel_requested(job_id, progress):
                        return "cancelled by the operator; nothing was published", True
                except JobError as exc:
                    return f"{exc}; the job was stopped and nothing was published", False
        return "", False


class _Cancelled(Exception):
    """A job stopped on purpose: by the operator (ends ``cancelled``) or by a shutdown (``failed``)."""

    def __init__(self, message: str, by_operator: bool) -> None:
        super().__init__(message)
        self.by_operator = by_operator
