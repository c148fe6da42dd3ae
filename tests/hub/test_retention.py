"""Result retention on SQLite: what is archived is exactly what is deleted, the window is untouched,
a dry run changes nothing, a crash or a kill at any point loses no row, the config needs an archive
folder, and ``leukonet hub retention run`` and ``hub serve`` apply it."""

from __future__ import annotations

import getpass
import gzip
import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from hub.cli import cli as hub_cli
from hub.config import HubConfig, RetentionSection
from hub.db.migrate import upgrade
from hub.db.models import AuditEntry, Classification
from hub.db.session import Database
from hub.retention import ArchiveFile, Retention, RetentionError, RetentionTicker, complete_length
from hub.server import serve
from shared.clock import utcnow
from shared.config import ConfigError
from tests.conftest import free_port, wait_until
from tests.hub.conftest import hub_config

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAYS = 30
CUTOFF = NOW - timedelta(days=DAYS)
OLD, KEPT = 250, 20  # results before the cutoff; results inside the window (one exactly at the cutoff)
ARCHIVE_NAME = "results-20260601T120000Z.jsonl.gz"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    upgrade(database)
    yield database
    database.dispose()


def section(tmp_path: Path, **overrides: Any) -> RetentionSection:
    values: dict[str, Any] = {"results_days": DAYS, "archive_dir": tmp_path / "archive", "batch_size": 100}
    return RetentionSection(**(values | overrides))


def add_results(db: Database, times: Sequence[datetime]) -> None:
    with db.transaction() as s:
        for i, at in enumerate(times):
            s.add(
                Classification(
                    result_id=uuid.uuid4(),
                    agent_id=f"scope-{i % 3}",
                    lab="Lab A",
                    image_name=f"img-{i}.png",
                    image_sha256="ab" * 32,
                    label="ALL" if i % 2 else "normal",
                    confidence=0.5 + i % 50 / 100,
                    probabilities={"ALL": 0.25, "normal": 0.75},
                    low_confidence=i % 7 == 0,
                    model_name="leuko",
                    model_version="1.0.0",
                    device="CPU",
                    precision="FP32",
                    execution_precision=None,
                    timings={"total_ms": 8.5},
                    captured_at=at,
                    received_at=at + timedelta(seconds=2),
                )
            )


def seed(db: Database, now: datetime = NOW) -> None:
    """OLD results before the cutoff of ``now``, KEPT after it: with the fixed clock the first one
    exactly at the cutoff; with the real clock (``now=utcnow()``) an hour after it, so that the run a
    moment later keeps it too."""
    cutoff = now - timedelta(days=DAYS)
    old = [cutoff - timedelta(minutes=1 + i // 2) for i in range(OLD)]  # pairs share a time
    start = 0 if now == NOW else 1
    kept = [cutoff + timedelta(hours=start + i) for i in range(KEPT)]
    add_results(db, old + kept)


def as_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return str(value) if isinstance(value, uuid.UUID) else value


def table(db: Database) -> dict[str, dict[str, Any]]:
    """Every row, by result id, as JSON would carry it."""
    with db.session() as s:
        rows = s.execute(select(Classification.__table__)).mappings().all()
    return {str(r["result_id"]): {k: as_json(v) for k, v in r.items()} for r in rows}


def archived(folder: Path) -> list[dict[str, Any]]:
    """Every line of every finished archive in ``folder``."""
    lines = []
    for path in sorted(folder.glob("results-*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines += [json.loads(line) for line in fh]
    return lines


def audit_entries(db: Database) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.actor == "retention")))


def split(rows: Mapping[str, dict[str, Any]], now: datetime = NOW) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rows retention must delete, rows it must keep)."""
    cutoff = (now - timedelta(days=DAYS)).isoformat()
    old = {k: r for k, r in rows.items() if r["captured_at"] < cutoff}
    return old, {k: r for k, r in rows.items() if k not in old}


def test_a_run_archives_exactly_the_rows_it_deletes_and_keeps_the_window(db, tmp_path):
    seed(db)
    old, kept = split(table(db))
    assert (len(old), len(kept)) == (OLD, KEPT)
    report = Retention(db, section(tmp_path), clock=lambda: NOW).run()
    assert (report.matched, report.deleted, report.batches) == (OLD, OLD, 3)
    assert report.archive == tmp_path / "archive" / ARCHIVE_NAME
    assert sorted(p.name for p in report.archive.parent.iterdir()) == [".retention.lock", ARCHIVE_NAME]
    lines = archived(tmp_path / "archive")
    assert len(lines) == OLD and {r["result_id"]: r for r in lines} == old  # every column, every row
    assert [r["captured_at"] for r in lines] == sorted(r["captured_at"] for r in lines)  # oldest first
    assert table(db) == kept  # the window, the row at the cutoff included, untouched
    entries = audit_entries(db)
    assert [e.details["archived"] for e in entries] == [100, 100, 50]
    assert {(e.action, e.subject) for e in entries} == {("results.archive", f"archive/{ARCHIVE_NAME}")}
    assert all(
        e.details["deleted"] == e.details["archived"] and e.details["trigger"] == "serve" for e in entries
    )
    again = Retention(db, section(tmp_path), clock=lambda: NOW).run()  # idempotent: nothing left
    assert (again.matched, again.archive) == (0, None) and len(archived(tmp_path / "archive")) == OLD


def test_a_dry_run_changes_nothing(db, tmp_path):
    seed(db)
    before = table(db)
    report = Retention(db, section(tmp_path), clock=lambda: NOW).run(dry_run=True)
    assert (report.matched, report.deleted, report.archive) == (OLD, 0, None)
    assert report.oldest == CUTOFF - timedelta(minutes=OLD // 2) and report.newest == CUTOFF - timedelta(
        minutes=1
    )
    assert table(db) == before and audit_entries(db) == []
    assert not (tmp_path / "archive").exists()


class FailOnBatch:
    """Evidence hook that fails before the deletion of batch ``n``: a crash after the archive is
    fsynced, before the rows are deleted."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def before_delete(self, s: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise OSError("simulated crash between archive and delete")

    def after_commit(self, result_ids: Sequence[uuid.UUID]) -> None:
        return None


def test_a_crash_between_archive_and_delete_loses_nothing(db, tmp_path):
    seed(db)
    old, kept = split(table(db))
    with pytest.raises(OSError, match="simulated crash"):
        Retention(db, section(tmp_path), clock=lambda: NOW, evidence=FailOnBatch(2)).run()
    left = table(db)
    assert len(left) == OLD - 100 + KEPT  # batch 1 went; batch 2 was rolled back
    first = archived(tmp_path / "archive")
    assert len(first) == 200 and not list(
        (tmp_path / "archive").glob(".*.part")
    )  # finished despite the crash
    again = Retention(db, section(tmp_path), clock=lambda: NOW).run()
    assert again.archive is not None and again.archive.name == ARCHIVE_NAME.replace(".jsonl", "-2.jsonl")
    lines = archived(tmp_path / "archive")
    assert {r["result_id"]: r for r in lines} == old and table(db) == kept
    copies = Counter(r["result_id"] for r in lines)
    assert sorted(Counter(copies.values()).items()) == [(1, 150), (2, 100)]  # batch 2 archived twice


KILLED_RUN = """
import sys, time
from datetime import datetime
from pathlib import Path
from hub.config import RetentionSection
from hub.db.session import Database
from hub.retention import Retention

url, folder, now, marker = sys.argv[1:]

class HangOnSecondBatch:
    calls = 0
    def before_delete(self, s, rows):
        self.calls += 1
        if self.calls == 2:
            Path(marker).write_text("archived batch 2")
            time.sleep(120)  # killed here: batch 2 is in the archive, not deleted
    def after_commit(self, ids):
        pass

section = RetentionSection(results_days=30, archive_dir=folder, batch_size=100)
clock = lambda: datetime.fromisoformat(now)
Retention(Database(url), section, clock=clock, evidence=HangOnSecondBatch()).run()
"""


def test_a_killed_run_loses_nothing_and_the_next_run_finishes_its_archive(db, tmp_path):
    seed(db)
    old, kept = split(table(db))
    folder, marker = tmp_path / "archive", tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, db.url, str(folder), NOW.isoformat(), str(marker)], cwd=ROOT
    )
    try:
        wait_until(marker.exists, 60, 0.05, what="the run to reach batch 2")
    finally:
        proc.kill()
        proc.wait(10)
    parts = list(folder.glob(".results-*.part"))
    assert [p.name for p in parts] == [f".{ARCHIVE_NAME}.part"] and archived(folder) == []
    with parts[0].open("ab") as fh:  # and the kill cut a third batch short while it was written
        fh.write(gzip.compress(b'{"result_id": "torn"}\n' * 50)[:-20])
    assert len(table(db)) == OLD - 100 + KEPT
    report = Retention(db, section(tmp_path), clock=lambda: NOW).run()
    assert report.recovered == [folder / ARCHIVE_NAME] and report.matched == OLD - 100
    with gzip.open(folder / ARCHIVE_NAME, "rt") as fh:
        assert len(fh.readlines()) == 200  # batches 1 and 2; the torn tail was cut
    lines = archived(folder)
    assert {r["result_id"]: r for r in lines} == old and table(db) == kept
    assert len(lines) == OLD + 100 and not list(folder.glob(".*.part"))


def test_complete_length_keeps_whole_gzip_members_only(tmp_path):
    archive = ArchiveFile(tmp_path, NOW)
    archive.append([{"n": i} for i in range(10)])
    archive.append([{"n": i} for i in range(10, 30)])
    path = archive.close()
    assert path is not None and path.name == ARCHIVE_NAME
    whole = path.stat().st_size
    assert complete_length(path) == whole
    for tail in (gzip.compress(b"x" * 1000)[:-1], b"\x1f\x8b\x08", b"garbage"):
        torn = tmp_path / "torn.gz"
        torn.write_bytes(path.read_bytes() + tail)
        assert complete_length(torn) == whole
    empty = tmp_path / "empty.gz"
    empty.touch()
    assert complete_length(empty) == 0
    # a second archive in the same second gets its own name
    other = ArchiveFile(tmp_path, NOW)
    other.append([{"n": 1}])
    assert other.close() == tmp_path / "results-20260601T120000Z-2.jsonl.gz"


def test_one_run_at_a_time_per_archive_folder(db, tmp_path):
    seed(db)
    reached, release = threading.Event(), threading.Event()

    class Hold(FailOnBatch):
        def before_delete(self, s: Any, rows: Sequence[Mapping[str, Any]]) -> None:
            reached.set()
            release.wait(30)

    first = threading.Thread(
        target=Retention(db, section(tmp_path), clock=lambda: NOW, evidence=Hold(0)).run, daemon=True
    )
    first.start()
    try:
        assert reached.wait(30)
        with pytest.raises(RetentionError, match="another retention run holds"):
            Retention(db, section(tmp_path), clock=lambda: NOW).run()
    finally:
        release.set()
        first.join(30)
    assert len(table(db)) == KEPT


def test_the_config_needs_an_archive_folder_with_results_days(tmp_path):
    with pytest.raises(ConfigError, match=r"retention.archive_dir is required when retention.results_days"):
        HubConfig.load(None, retention={"results_days": 30})
    assert HubConfig.load(None).retention.results_days is None  # default: keep every result
    config = HubConfig.load(None, retention={"results_days": 30, "archive_dir": str(tmp_path)})
    assert config.retention.archive_dir == tmp_path


def test_a_run_without_a_policy_is_refused(db, tmp_path):
    with pytest.raises(RetentionError, match="results_days is not set"):
        Retention(db, RetentionSection()).run()


def test_the_ticker_counts_failures_and_keeps_going(db, tmp_path):
    seed(db, now=utcnow())
    blocked = tmp_path / "archive"
    blocked.write_text("a file where the archive folder should be")
    ticker = RetentionTicker(Retention(db, section(tmp_path)), interval_s=0.05)
    ticker.start()
    try:
        wait_until(lambda: ticker.failures >= 2, 10, what="two failed runs")
        assert ticker.is_alive() and len(table(db)) == OLD + KEPT  # nothing deleted without an archive
        blocked.unlink()
        wait_until(lambda: ticker.runs >= 1, 10, what="a run once the folder can be made")
        assert len(table(db)) == KEPT and len(archived(tmp_path / "archive")) == OLD
    finally:
        ticker.stop()
    assert not ticker.is_alive()


def write_config(tmp_path: Path, db: Database, **retention: Any) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "hub"), "database_url": db.url, "retention": retention})
    )
    return path


def test_cli_dry_run_then_run(db, tmp_path):
    seed(db, now=utcnow())
    folder = tmp_path / "archive"
    path = write_config(tmp_path, db, results_days=DAYS, archive_dir=str(folder), batch_size=100)
    r = CliRunner().invoke(hub_cli, ["retention", "run", "--dry-run", "--config", str(path)])
    assert r.exit_code == 0, r.output
    assert f"dry run: would archive {OLD} results captured before" in r.output and str(folder) in r.output
    assert len(table(db)) == OLD + KEPT
    r = CliRunner().invoke(hub_cli, ["retention", "run", "--config", str(path)])
    assert r.exit_code == 0, r.output
    assert f"archived {OLD} results" in r.output and "in 3 batches; deleted 250" in r.output
    assert len(table(db)) == KEPT and len(archived(folder)) == OLD
    assert {e.details["trigger"] for e in audit_entries(db)} == {f"cli:{getpass.getuser()}"}
    r = CliRunner().invoke(hub_cli, ["retention", "run", "--config", str(path)])
    assert r.exit_code == 0 and "nothing archived or deleted" in r.output


def test_cli_without_a_policy_says_how_to_set_one(db, tmp_path):
    r = CliRunner().invoke(hub_cli, ["retention", "run", "--config", str(write_config(tmp_path, db))])
    assert r.exit_code == 1 and "retention.results_days is not set" in r.output


def test_hub_serve_applies_retention(tmp_path):
    folder = tmp_path / "archive"
    config = hub_config(
        tmp_path, None, port=free_port(), retention={"results_days": DAYS, "archive_dir": str(folder)}
    )
    db = Database(config.db_url)
    upgrade(db)
    seed(db, now=utcnow())
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(config, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(table(db)) == KEPT, 30, 0.1, what="serve's retention run")
        assert len(archived(folder)) == OLD
    finally:
        stop.set()
        thread.join(30)
        db.dispose()
    assert not thread.is_alive()
