"""``leukonet agent ...``: run, check, classify, rollback, enroll and rotate-credentials.

Every command that takes ``--config`` loads :class:`agents.config.AgentConfig` once; a bad config
exits with status 2 and the :class:`shared.config.ConfigError` text naming the field.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any, cast

import click
import requests

from shared.config import ConfigError

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Agent YAML config (LEUKONET_AGENT_* environment variables override it).",
)


def _load_config(path: Path) -> Any:
    from agents.config import AgentConfig

    try:
        return AgentConfig.load(path)
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


@click.group()
def cli() -> None:
    """Run or check an edge agent."""


@cli.command()
@CONFIG_OPTION
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Create this file once the model is loaded and images are being taken (for supervisors).",
)
def run(config_path: Path, ready_file: Path | None) -> None:
    """Run the agent until SIGINT/SIGTERM."""
    from agents.backends import BackendError
    from agents.daemon import build_agent
    from agents.statelock import StateLock, StateLockedError
    from shared.logs import setup_logging

    config = _load_config(config_path)
    setup_logging(config.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def ready() -> None:
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.write_text(f"{os.getpid()}\n", encoding="utf-8")

    try:
        with StateLock(config.state_path):
            agent = build_agent(config)
            agent.run(stop, on_ready=ready)
    except (StateLockedError, BackendError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


@cli.command()
@CONFIG_OPTION
def check(config_path: Path) -> None:
    """Validate the config, list OpenVINO devices, test the broker and the hub."""
    from agents.backends import BackendError, create_backend
    from agents.backends.openvino_backend import import_openvino
    from agents.backends.precision import probe as probe_precision
    from agents.enroll import credentials_check
    from shared.bundle import BundleError, load_public_key

    config = _load_config(config_path)
    failures = 0

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        click.echo(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")

    report(True, "config", f"{config_path} (agent {config.agent_id}, backend {config.backend})")
    try:
        ov = import_openvino()
        core = ov.Core()
        names = [f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in core.available_devices]
        report(True, "openvino devices", ", ".join([*names, "AUTO"]))
    except (BackendError, RuntimeError) as exc:
        report(config.backend != "openvino", "openvino devices", str(exc))
    precision = config.effective_precision()
    try:
        create_backend(config.backend, config.device, precision, config.performance_hint).close()
        executes = "n/a (no network)"
        if config.backend == "openvino":
            ov = import_openvino()
            executes = probe_precision(ov.Core(), ov, config.device, precision)
            executes = executes or "not reported by the device"
        report(True, "device", f"{config.device}, precision {precision}, executes {executes}")
    except (BackendError, ValueError, RuntimeError) as exc:
        report(False, "device", str(exc))
    if config.model_public_key is None:
        report(False, "model_public_key", "not set: the agent will refuse every bundle")
    else:
        try:
            load_public_key(config.model_public_key)
            report(True, "model_public_key", str(config.model_public_key))
        except (OSError, BundleError) as exc:
            report(False, "model_public_key", str(exc))
    creds, found = credentials_check(config)
    for level, detail in found:
        if level == "warn":
            click.echo(f"warn credentials: {detail}")
        else:
            report(level == "ok", "credentials", detail)
    login = (creds.mqtt_username, creds.mqtt_password) if creds else None
    ok, detail = _check_broker(config.mqtt, f"{config.agent_id}-check", login=login)
    report(ok, "broker", detail)
    url = f"{config.hub.url}/healthz"
    try:
        resp = requests.get(url, timeout=5)
        report(resp.status_code == 200, "hub", f"GET {url} -> HTTP {resp.status_code}")
    except requests.RequestException as exc:
        report(False, "hub", f"GET {url}: {exc}")
    else:
        if creds is None or creds.api_token is None:
            report(False, "hub token", "none (see credentials above): the agent cannot download models")
        else:
            models_url = f"{config.hub.url}/api/v1/models"
            hint = " (re-enroll?)" if creds.source == "file" else " (is it a token with the agent role?)"
            try:
                auth = {"Authorization": f"Bearer {creds.api_token}"}
                resp = requests.get(models_url, headers=auth, timeout=5, allow_redirects=False)
                report(
                    resp.status_code == 200,
                    "hub token",
                    f"GET {models_url} -> HTTP {resp.status_code}"
                    + ("" if resp.status_code == 200 else hint),
                )
            except requests.RequestException as exc:
                report(False, "hub token", f"GET {models_url}: {exc}")
    if config.http.enabled:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((config.http.host, config.http.port))
            report(True, "http endpoint", f"{config.http.host}:{config.http.port} can be bound")
        except OSError as exc:
            report(False, "http endpoint", f"{config.http.host}:{config.http.port}: {exc.strerror}")
    for name, folder in (("watch_dir", config.watch_dir), ("state_dir", config.state_path)):
        report(
            folder.is_dir() or not folder.exists(),
            name,
            f"{folder} ({'exists' if folder.is_dir() else 'will be created'})",
        )
    if failures:
        raise click.ClickException(f"{failures} check(s) failed")


def _check_broker(
    mqtt_config: Any,
    client_id: str,
    timeout: float = 5.0,
    login: tuple[str | None, str | None] | None = None,
) -> tuple[bool, str]:
    """Open a real MQTT session (credentials, TLS) and wait for the broker's CONNACK.

    ``login`` (username, password), when given, replaces the login of ``mqtt_config``.
    """

    where = f"mqtt://{mqtt_config.host}:{mqtt_config.port}"
    from shared.mqtt import make_client

    client = make_client(mqtt_config, client_id, persistent=False)
    if login is not None:
        client.username_pw_set(*login)
    answer: list[Any] = []
    got = threading.Event()

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answer.append(reason_code)
        got.set()

    client.on_connect = on_connect
    try:
        client.connect(mqtt_config.host, mqtt_config.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return False, f"{where}: {exc}"
    client.loop_start()
    try:
        if not got.wait(timeout):
            return False, f"{where}: no CONNACK within {timeout:g} s"
        code = answer[0]
        if code.is_failure:
            return False, f"{where}: connection refused ({code}); check the broker login (credentials above)"
        return True, f"{where}: MQTT session accepted"
    finally:
        client.disconnect()
        client.loop_stop()


@cli.command()
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="An extracted, signed bundle folder.",
)
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A bundle zip (verified and extracted to a temporary folder).",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The trainer's Ed25519 public key PEM.",
)
@click.option("--backend", type=click.Choice(["openvino", "fake"]), default="openvino", show_default=True)
@click.option("--device", default="AUTO", show_default=True, help="OpenVINO device name.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "FP32", "FP16", "INT8"]),
    default="auto",
    show_default=True,
    help="IR to run: auto = FP16 on MYRIAD, else FP32; INT8 needs the bundle's ir_int8 (else FP32 runs).",
)
@click.option(
    "--low-confidence-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.8,
    show_default=True,
    help="Results below this confidence are flagged low_confidence.",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def classify(
    model_dir: Path | None,
    bundle: Path | None,
    public_key: Path,
    backend: str,
    device: str,
    precision: str,
    low_confidence_threshold: float,
    files: tuple[Path, ...],
) -> None:
    """Classify FILES offline; print one JSON line per file (exit 1 if any file failed)."""
    from agents.backends import BackendError, create_backend
    from agents.config import Precision, effective_precision
    from agents.models import ModelError, verify_model_dir
    from agents.models.ood import load_ood
    from agents.offline import as_json, classify_file
    from shared.bundle import BundleError, load_public_key, verify_bundle

    if (model_dir is None) == (bundle is None):
        raise click.UsageError("give exactly one of --model-dir or --bundle")
    with tempfile.TemporaryDirectory(prefix="leukonet-classify-") as tmp:
        try:
            key = load_public_key(public_key)
            if bundle is not None:
                model_dir = Path(tmp) / "model"
                manifest = verify_bundle(bundle, key, model_dir)
            else:
                assert model_dir is not None
                manifest = verify_model_dir(model_dir, key)
            prec = effective_precision(cast(Precision, precision), device)
            engine = create_backend(backend, device, prec)
            engine.load(model_dir, manifest)
            ood = load_ood(model_dir, manifest, engine.precision)
        except (BundleError, ModelError, BackendError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        failed = 0
        try:
            for path in files:
                line: dict[str, Any] = {"file": str(path)}
                try:
                    line.update(classify_file(engine, manifest, ood, path, low_confidence_threshold))
                    line.update(
                        model_name=manifest.name,
                        model_version=manifest.version,
                        device=engine.device,
                        precision=engine.precision,
                    )
                except (
                    OSError,
                    ValueError,
                    BackendError,
                ) as exc:  # ImageDecodeError, KindRefused: ValueError
                    failed += 1
                    line["error"] = str(exc)
                click.echo(json.dumps(line, default=as_json))
        finally:
            engine.close()
    if failed:
        sys.exit(1)


@cli.command()
@CONFIG_OPTION
def rollback(config_path: Path) -> None:
    """Re-activate the previous model of a stopped agent (the current one is marked rejected)."""
    from agents.backends import BackendError
    from agents.daemon import build_agent
    from agents.models import ModelError
    from agents.statelock import StateLock, StateLockedError
    from shared.logs import setup_logging

    config = _load_config(config_path)
    setup_logging(config.log_level)
    try:
        with StateLock(config.state_path):
            agent = build_agent(config, connect=False)
            try:
                loaded = agent.models.rollback()
            finally:
                agent.models.close()
                agent.outbox.close()
    except (StateLockedError, ModelError, BackendError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"rolled back: active model is now {loaded.name} {loaded.version}; "
        "the agent reports it when it next starts"
    )


@cli.command("enroll")
@CONFIG_OPTION
@click.option(
    "--token",
    envvar="LEUKONET_ENROLL_TOKEN",
    help="The single-use enrollment token (lke_...); env LEUKONET_ENROLL_TOKEN. Prefer --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the enrollment token (kept out of the process list and shell history).",
)
@click.option("--hub", help="The hub's URL as the enrollment token came with it; must be hub.url's origin.")
@click.option("--force", is_flag=True, help="Replace credentials this agent already has.")
def enroll_command(
    config_path: Path, token: str | None, token_file: Path | None, hub: str | None, force: bool
) -> None:
    """Redeem an enrollment token: store this agent's own MQTT login and API token (mode 0600)."""
    from agents.credentials import CredentialsError
    from agents.enroll import EnrollError, enroll, read_token, summary

    config = _load_config(config_path)
    try:
        value = read_token(token, token_file)
    except EnrollError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        stored = enroll(config, value, hub, force)
    except (EnrollError, CredentialsError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary(stored, config_path, "enrolled"):
        click.echo(line)


@cli.command("rotate-credentials")
@CONFIG_OPTION
def rotate_credentials(config_path: Path) -> None:
    """Get a new MQTT password and API token from the hub (the old token stops working at once)."""
    from agents.credentials import CredentialsError
    from agents.enroll import EnrollError, rotate, summary

    config = _load_config(config_path)
    try:
        stored = rotate(config)
    except (EnrollError, CredentialsError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary(stored, config_path, "rotated"):
        click.echo(line)
