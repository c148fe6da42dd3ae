"""``leukonet hub ...``: serve, migrate, ingest, check, agents, users, tokens, retention. Each command
is a composition root.

A bad config exits with status 1 and the :class:`~shared.config.ConfigError` text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import click
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from hub.cli_agents import agents_cli
from hub.cli_common import config_option, load_config
from hub.cli_retention import retention_cli
from hub.cli_users import tokens_cli, users_cli
from hub.config import HubConfig
from hub.ports import port_free
from shared.config import ConfigError
from shared.logs import kv

log = logging.getLogger(__name__)


@click.group("hub")
def cli() -> None:
    """Run the hub: REST API + dashboard, MQTT ingest, database migrations."""


cli.add_command(agents_cli)
cli.add_command(users_cli)
cli.add_command(tokens_cli)
cli.add_command(retention_cli)


@cli.command()
@config_option
def serve(config_path: Path | None) -> None:
    """Migrate, start the embedded broker (if configured), ingest and the web server until Ctrl-C."""
    from hub.broker.embedded import BrokerStartError
    from hub.server import serve as run_serve

    config = load_config(config_path)
    try:
        run_serve(config)
    except (ConfigError, BrokerStartError) as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database {_safe_url(config)} failed: {exc}") from exc


@cli.command()
@config_option
def migrate(config_path: Path | None) -> None:
    """Upgrade the database schema to the newest revision (Alembic ``upgrade head``)."""
    from hub.db.migrate import upgrade
    from hub.db.session import Database
    from hub.identity.users import ensure_first_admin
    from shared.clock import utcnow

    config = load_config(config_path)
    db = Database(config.db_url)
    try:
        revision = upgrade(db)
        with db.session() as s:
            created = ensure_first_admin(s, config, utcnow())
            s.commit()
    except SQLAlchemyError as exc:
        raise click.ClickException(f"migrating {_safe_url(config)} failed: {exc}") from exc
    finally:
        db.dispose()
    click.echo(f"database at revision {revision}")
    if created:
        click.echo(f"created the first admin {created!r} (admin_password)")


@cli.command()
@config_option
@click.option("--client-id", default=None, help="Override mqtt.client_id (one per scale-out worker).")
def ingest(config_path: Path | None, client_id: str | None) -> None:
    """Run only the MQTT ingest worker (scale out with mqtt.share_group and distinct client ids).

    It also drives rollouts (reconciling agents' reports and ticking timeouts), as ``serve`` does;
    several workers serialise on the rollout rows (``SELECT ... FOR UPDATE`` on PostgreSQL).
    """
    from hub.ingest.runtime import tune_gc
    from hub.ingest.worker import IngestWorker
    from hub.rollouts.ticker import RolloutTicker
    from hub.server import install_stop_handlers
    from hub.services import build_services

    config = load_config(config_path)
    stop = threading.Event()
    install_stop_handlers(stop)
    services = build_services(config)
    tune_gc()  # start-up objects out of the collector's sight: less GC work per ingested message
    ticker = RolloutTicker(services.rollouts, config.rollouts.tick_s)
    ticker.start()
    try:
        worker = IngestWorker(config, services.db, client_id=client_id, on_commit=services.rollouts.on_ingest)
        worker.run_until(stop)
    finally:
        ticker.stop()
        services.close()


@cli.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config and test the database and the broker; exit 1 when something fails."""
    from hub.db.migrate import current_revision, head_revision
    from hub.db.session import Database
    from hub.mqtt.publisher import BrokerUnavailable, MqttPublisher
    from hub.registry.service import load_trusted_keys

    config = load_config(config_path)
    failures = 0

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        click.echo(f"{'ok  ' if ok else 'FAIL'}  {what:<14} {detail}")

    report(True, "config", f"valid ({len(config.tokens)} tokens, public_url {config.public_url})")
    if config.secret_key is None:
        # only `serve` needs it; an ingest-only worker is fine without
        click.echo("warn  secret_key     missing: `serve` needs secret_key (or LEUKONET_HUB_SECRET_KEY)")
    try:
        keys = load_trusted_keys(config.trusted_keys)
        report(True, "trusted_keys", f"{len(keys)} loaded" + ("" if keys else " (uploads will be refused)"))
    except ConfigError as exc:
        report(False, "trusted_keys", str(exc))
    db = Database(config.db_url)
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current, head = current_revision(db), head_revision()
        report(
            True,
            "database",
            f"{_safe_url(config)} reachable; revision {current or 'none'} (head {head})"
            + ("" if current == head else "; run `leukonet hub migrate`"),
        )
    except SQLAlchemyError as exc:
        report(False, "database", f"{_safe_url(config)}: {str(exc).splitlines()[0]}")
    finally:
        db.dispose()
    if config.broker.embedded:
        _check_embedded_broker(config, report)
    else:
        publisher = MqttPublisher(config.mqtt)
        try:
            publisher.check(timeout=5.0)
            report(True, "broker", f"{config.mqtt.host}:{config.mqtt.port} accepts connections")
        except BrokerUnavailable as exc:
            report(False, "broker", str(exc))
        finally:
            publisher.close()
    _check_running_hub(config, report)
    log.debug(kv("check_done", failures=failures))
    if failures:
        raise click.exceptions.Exit(1)


def _check_embedded_broker(config: HubConfig, report: Callable[[bool, str, str], None]) -> None:
    """The embedded broker can start: mosquitto with its dynamic security plugin (or amqtt, asked
    for by name, which enforces no identities), on a free port."""
    from hub.broker.embedded import BrokerStartError, find_dynsec_plugin, find_mosquitto

    port = config.broker.port
    free = port_free(port)
    busy = "" if free else " -- port already in use"
    if config.broker.implementation == "amqtt":
        report(
            free, "broker", f"embedded amqtt on 127.0.0.1:{port} (anonymous: identities NOT enforced){busy}"
        )
        return
    exe = find_mosquitto()
    if exe is None:
        report(
            False,
            "broker",
            "embedded mosquitto: not installed (./services.sh demo or apt-get install mosquitto)",
        )
        return
    try:
        plugin = find_dynsec_plugin(exe)
    except BrokerStartError as exc:
        report(False, "broker", str(exc))
        return
    report(free, "broker", f"embedded mosquitto on 127.0.0.1:{port}, dynamic security {plugin}{busy}")


def _check_running_hub(config: HubConfig, report: Callable[[bool, str, str], None]) -> None:
    """When a hub answers at ``public_url``: its health and each loop's liveness (``/healthz``).

    A hub that is not running yet is not a failure (``check`` runs before ``serve`` too); a running
    one that reports itself degraded, or a dead loop, is.
    """
    import requests

    url = f"{config.public_url}/healthz"
    try:
        resp = requests.get(url, timeout=3)
        body = resp.json()
    except (requests.RequestException, ValueError):
        click.echo(f"info  {'running hub':<14} none answers at {url} (checked the configuration only)")
        return
    ok = resp.status_code == 200
    problems = "; ".join(body.get("problems", []))
    report(ok, "running hub", f"{url} -> {body.get('status')}" + ("" if ok else f": {problems}"))
    for name, state in sorted((body.get("ingest", {}).get("loops") or {}).items()):
        age = state.get("last_activity_age_s")
        detail = (
            f"{'alive' if state.get('alive') else 'NOT RUNNING'}, restarts {state.get('restarts', 0)}, "
            + ("no activity yet" if age is None else f"last activity {age:.1f} s ago")
        )
        report(bool(state.get("alive")), f"loop {name}", detail)


def _safe_url(config: HubConfig) -> str:
    from sqlalchemy.engine import make_url

    return make_url(config.db_url).render_as_string(hide_password=True)
