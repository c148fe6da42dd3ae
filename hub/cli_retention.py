"""``leukonet hub retention run``: apply the result retention policy now, on the hub host.

It works on the database and ``retention.archive_dir`` of ``--config`` directly, like
``leukonet hub agents add``, and does what ``leukonet hub serve`` does every
``retention.interval_s`` (see :mod:`hub.retention`); the two never run at once (a lock in the
archive folder). Each batch is audited with the actor ``retention`` and ``trigger`` ``cli:<os user>``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from hub.cli_common import config_option, load_config
from hub.cli_users import cli_actor


@click.group("retention")
def retention_cli() -> None:
    """Result retention: archive, then delete, results older than retention.results_days."""


def _when(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "-"


@retention_cli.command("run")
@click.option("--dry-run", is_flag=True, help="Only count what would be archived and deleted.")
@config_option
def run(dry_run: bool, config_path: Path | None) -> None:
    """Archive results older than retention.results_days to retention.archive_dir, then delete them."""
    from sqlalchemy.exc import SQLAlchemyError

    from hub.db.session import Database
    from hub.evidence import EvidenceStore
    from hub.retention import Retention, RetentionError

    config = load_config(config_path)
    db = Database(config.db_url)
    try:
        store = EvidenceStore.from_config(config, db)
        policy = Retention(db, config.retention, trigger=cli_actor(), evidence_store=store)
        report = policy.run(dry_run=dry_run)
    except RetentionError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        raise click.ClickException(
            f"retention failed: {first}; batches already committed are archived and deleted, "
            "run it again for the rest (`leukonet hub migrate` first if the schema is old)"
        ) from exc
    except OSError as exc:
        raise click.ClickException(
            f"retention failed on the archive folder {config.retention.archive_dir}: {exc}; "
            "nothing not yet archived was deleted"
        ) from exc
    finally:
        db.dispose()
    cutoff = report.cutoff.isoformat()
    if config.retention.evidence_days is not None or report.orphans_removed:
        verb = "would delete" if dry_run else "deleted"
        count = report.evidence_matched if dry_run else report.evidence_deleted
        click.echo(
            f"evidence: {verb} {count} images stored more than {config.retention.evidence_days} days ago; "
            f"{report.orphans_removed} files without a database row removed"
        )
    for path in report.recovered:
        click.echo(f"finished the archive of an interrupted run: {path}")
    if dry_run:
        if not report.matched:
            click.echo(f"dry run: no result was captured before {cutoff}; nothing would be archived")
            return
        click.echo(
            f"dry run: would archive {report.matched} results captured before {cutoff} (oldest "
            f"{_when(report.oldest)}, newest {_when(report.newest)}) to {config.retention.archive_dir}, "
            f"then delete them, {config.retention.batch_size} per transaction"
        )
        return
    if not report.matched:
        click.echo(f"no result was captured before {cutoff}; nothing archived or deleted")
        return
    click.echo(
        f"archived {report.matched} results captured before {cutoff} (oldest {_when(report.oldest)}, "
        f"newest {_when(report.newest)}) to {report.archive} in {report.batches} batches; "
        f"deleted {report.deleted}"
    )
