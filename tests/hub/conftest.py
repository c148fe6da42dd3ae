"""Hub fixtures: a config on a temp SQLite file, the ``app`` / ``client`` / ``runner`` trio, keys and
test bundles signed with a key generated per test, helpers to publish agent messages, and people:
the first admin (``admin`` / :data:`ADMIN_PASSWORD`, created as ``leukonet hub serve`` does), a user
of any role (:func:`add_user`) and a dashboard login through the form (:func:`login`)."""

from __future__ import annotations

import atexit
import json
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from hub.app import close_app, create_app
from hub.config import HubConfig
from hub.db.migrate import upgrade
from hub.db.session import Database
from hub.extensions import hub_ext
from hub.identity.users import create_user, ensure_first_admin, find_user
from hub.ingest.writer import IngestWriter
from shared.bundle import (
    Manifest,
    TensorSpec,
    build_bundle,
    digest_files,
    generate_keypair,
    load_private_key,
)
from shared.clock import utcnow
from shared.preprocessing_spec import PreprocessingSpec
from shared.schemas import (
    AgentState,
    AgentStatus,
    ClassificationResult,
    ModelEvent,
    ModelEventKind,
    Timings,
)
from tests.conftest import free_port, serve_in_thread

TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "trainer": "trainer-token-0123456789abcdef",
    "agent": "agent-token-0123456789abcdef",
}
ADMIN_USER = "admin"  # the config's admin_username (its default)
ADMIN_PASSWORD = "correct horse battery staple"  # the config's admin_password: the first admin's
USER_PASSWORD = "a user's password, long enough"  # what add_user gives people unless told otherwise
PEOPLE = ("viewer", "reviewer", "operator", "admin")


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Keys:
    private: Path
    public: Path


def make_keys(folder: Path) -> Keys:
    k = Keys(folder / "signing.pem", folder / "signing.pub.pem")
    generate_keypair(k.private, k.public)
    return k


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def hub_config(tmp_path: Path, keys: Keys | None, **overrides: Any) -> HubConfig:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "hub",
        "database_url": f"sqlite:///{tmp_path / 'hub' / 'hub.db'}",
        "public_url": "http://hub.test:8080",
        "secret_key": "test-secret-key-not-for-production",
        "admin_password": ADMIN_PASSWORD,
        "tokens": [{"name": f"t-{role}", "token": tok, "role": role} for role, tok in TOKENS.items()],
        "trusted_keys": [str(keys.public)] if keys else [],
        # nothing listens here unless a test points mqtt at a broker
        "mqtt": {
            "host": "127.0.0.1",
            "port": free_port(),
            "publish_timeout_s": 2.0,
            "client_id": f"hub-test-{uuid.uuid4().hex[:8]}",
        },
    }
    # Tests publish from many made-up agent ids: registration on first sight, unless a test says not.
    values["ingest"] = {"batch_size": 50, "batch_ms": 50, "auto_register_agents": True} | overrides.pop(
        "ingest", {}
    )
    values.update(overrides)
    config: HubConfig = HubConfig.load(None, **values)
    return config


def broker_config(tmp_path: Path, keys: Keys | None, port: int) -> HubConfig:
    """:func:`hub_config` with MQTT pointed at a broker on ``port`` (a fresh client id)."""
    return hub_config(
        tmp_path, keys, mqtt={"host": "127.0.0.1", "port": port, "client_id": f"hub-{uuid.uuid4().hex[:8]}"}
    )


#: (admin_username, admin_password) -> a SQLite file migrated to head with that first admin, made
#: once per test session by :func:`migrated_sqlite_template`.
_SQLITE_TEMPLATES: dict[tuple[str, str | None], Path] = {}


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def migrated_sqlite_template(config: HubConfig) -> Path:
    """A SQLite file at the newest revision holding ``config``'s first admin (none without an
    ``admin_password``), made on first use in this test session and then reused.

    The migrations and the first admin's argon2 hash cost most of a second per app on two busy
    cores; hundreds of tests start an app on a fresh file. The template is made by the same
    :func:`upgrade` and :func:`ensure_first_admin` calls a fresh file gets, so a copy of it is the
    database those calls would have left (the first admin's ``created_at`` is the template's).
    """
    password = config.admin_password.get_secret_value() if config.admin_password else None
    key = (config.admin_username, password)
    if key not in _SQLITE_TEMPLATES:
        folder = Path(tempfile.mkdtemp(prefix="leukonet-test-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "hub.db"
        db = Database(f"sqlite:///{path}")
        try:
            upgrade(db)
            with db.transaction() as s:
                ensure_first_admin(s, config, utcnow())
        finally:
            db.dispose()  # the last connection closes: the WAL is checkpointed into hub.db
        leftovers = [p.name for p in folder.iterdir() if p.name != "hub.db"]
        assert not leftovers, f"the template {path} left {leftovers}: a copy of hub.db alone would miss them"
        _SQLITE_TEMPLATES[key] = path
    return _SQLITE_TEMPLATES[key]


def migrated_app(config: HubConfig) -> Flask:
    """The hub app on ``config``'s database, migrated to the newest revision and with the first
    admin created, as ``leukonet hub serve`` starts (close it with close_app).

    A SQLite file that does not exist yet starts as a copy of :func:`migrated_sqlite_template`;
    any other database (PostgreSQL, an existing file) is migrated here, as before.
    """
    target = _sqlite_file(config.db_url)
    if target is not None and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_sqlite_template(config), target)
    else:
        db = Database(config.db_url)
        try:
            upgrade(db)
        finally:
            db.dispose()
    db = Database(config.db_url)
    try:
        with db.transaction() as s:
            ensure_first_admin(s, config, utcnow())  # a no-op on a template's copy that has the admin
    finally:
        db.dispose()
    return create_app(config)


@pytest.fixture
def config(tmp_path: Path, keys: Keys) -> HubConfig:
    return hub_config(tmp_path, keys)


@pytest.fixture
def app(config: HubConfig) -> Iterator[Flask]:
    application = migrated_app(config)
    application.config["TESTING"] = True
    try:
        yield application
    finally:
        close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def db(app: Flask) -> Database:
    from hub.extensions import hub_ext

    return hub_ext.for_app(app).db


# --- people ----------------------------------------------------------------------------------


def add_user(app: Flask, username: str, role: str, password: str = USER_PASSWORD) -> str:
    """Create a user with ``role`` directly in ``app``'s database (actor ``test``); returns the name."""
    with hub_ext.for_app(app).db.transaction() as s:
        create_user(s, username, role, password, "test", utcnow())
    return username


def csrf(html: str) -> str:
    """The CSRF token of the (first) form in a dashboard page."""
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(
    client: FlaskClient, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD, next: str | None = None
) -> Any:
    """Sign in through the login form as a browser does (GET for the CSRF token, then POST)."""
    token = csrf(client.get("/login").data.decode())
    url = "/login" if next is None else f"/login?next={next}"
    return client.post(url, data={"csrf_token": token, "username": username, "password": password})


def login_as(app: Flask, client: FlaskClient, role: str) -> str:
    """Sign ``client`` in as a user called ``role`` with that role (created on first use)."""
    with hub_ext.for_app(app).db.session() as s:
        exists = find_user(s, role) is not None
    if not exists:
        add_user(app, role, role)
    r = login(client, role, USER_PASSWORD if role != ADMIN_USER else ADMIN_PASSWORD)
    assert r.status_code == 302, r.data
    return role


def browser_login(page: Any, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> None:
    """Fill and send the login form shown in ``page``."""
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-form button[type=submit]")


# --- bundles ----------------------------------------------------------------------------------

BundleMaker = Callable[..., Path]


def build_test_bundle(
    out: Path,
    keys: Keys,
    name: str = "leuko",
    version: str = "1.0.0",
    labels: list[str] | None = None,
    pb_bytes: int = 2000,
) -> Path:
    """A small but well-formed bundle: fake model files, real manifest and signature."""
    labels = labels or ["ALL", "normal"]
    src = out.parent / f"src-{name}-{version}-{uuid.uuid4().hex[:6]}"
    for sub in ("ir/fp32", "ir/fp16"):
        (src / sub).mkdir(parents=True)
    (src / "model.pb").write_bytes(random.Random(pb_bytes).randbytes(pb_bytes))  # incompressible
    for prec in ("fp32", "fp16"):
        (src / "ir" / prec / "model.xml").write_text(f"<net name='{name}' precision='{prec}'/>")
        (src / "ir" / prec / "model.bin").write_bytes(prec.encode() * 64)
    rel = ["model.pb", "ir/fp32/model.xml", "ir/fp32/model.bin", "ir/fp16/model.xml", "ir/fp16/model.bin"]
    manifest = Manifest(
        name=name,
        version=version,
        labels=labels,
        input=TensorSpec(name="input", shape=[1, 75, 75, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, len(labels)], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=75),
        artifacts={
            "frozen_graph": "model.pb",
            "ir_fp32": "ir/fp32/model.xml",
            "ir_fp16": "ir/fp16/model.xml",
        },
        files=digest_files(src, rel),
        metrics={"accuracy": 0.9},
        parity={"fp32_max_abs": 1e-5},
    )
    build_bundle(src, manifest, load_private_key(keys.private), out)
    return out


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> BundleMaker:
    def _make(name: str = "leuko", version: str = "1.0.0", signed_by: Keys | None = None, **kw: Any) -> Path:
        out = tmp_path / "bundles" / f"{name}-{version}-{uuid.uuid4().hex[:6]}.zip"
        out.parent.mkdir(parents=True, exist_ok=True)
        return build_test_bundle(out, signed_by or keys, name, version, **kw)

    return _make


# --- agent messages ---------------------------------------------------------------------------


def make_result(
    agent_id: str = "scope-1",
    label: str = "ALL",
    confidence: float = 0.9,
    captured_at: datetime | None = None,
    **kw: Any,
) -> ClassificationResult:
    other = "normal" if label == "ALL" else "ALL"
    fields: dict[str, Any] = {
        "agent_id": agent_id,
        "lab": "Lab A",
        "image_name": f"img-{uuid.uuid4().hex[:8]}.png",
        "image_sha256": "a" * 64,
        "label": label,
        "confidence": confidence,
        "probabilities": {label: confidence, other: round(1 - confidence, 6)},
        "model_name": "leuko",
        "model_version": "1.0.0",
        "device": "CPU",
        "timings": Timings(decode_ms=1, preprocess_ms=1, inference_ms=5, total_ms=8),
        "captured_at": captured_at or datetime.now(timezone.utc),
    }
    fields.update(kw)
    return ClassificationResult(**fields)


def publish_all(
    port: int, messages: list[tuple[str, bytes, bool]], client_id: str | None = None, timeout: float = 10.0
) -> None:
    """Publish ``(topic, payload, retain)`` at QoS 1 and wait for every PUBACK."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def as_json(message: Any) -> bytes:
    data: bytes = message.to_json()
    return data


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- rollouts ---------------------------------------------------------------------------------


def upload_bundle(client: FlaskClient, path: Path, role: str = "trainer") -> Any:
    with path.open("rb") as fh:
        return client.post(
            "/api/v1/models",
            data={"bundle": (fh, path.name)},
            headers=auth(role),
            content_type="multipart/form-data",
        )


T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def env(tmp_path: Path, keys: Keys, private_broker: Any, make_bundle: BundleMaker) -> Iterator[Env]:
    """An app on a private Mosquitto with leuko 1.0.0 and 2.0.0 uploaded and a fake rollout clock."""
    app = migrated_app(broker_config(tmp_path, keys, private_broker.port))
    services = hub_ext.for_app(app)
    clock = FakeClock()
    services.rollouts.clock = clock
    client = app.test_client()
    for version in ("1.0.0", "2.0.0"):
        assert upload_bundle(client, make_bundle(version=version)).status_code == 201
    env = Env(app, client, services, clock, private_broker.port)
    yield env
    close_app(app)


class Env:
    def __init__(self, app, client, services, clock, port) -> None:
        self.app, self.client, self.services, self.clock, self.port = app, client, services, clock, port
        self.engine = services.rollouts
        self.writer = IngestWriter(services.db)

    def agents(self, n: int, lab: str = "Lab A", version: str = "1.0.0", prefix: str = "a") -> list[str]:
        ids = [f"{prefix}{i:02d}" for i in range(n)]
        self.writer.write(
            [
                AgentStatus(
                    agent_id=a, state=AgentState.ONLINE, lab=lab, model_name="leuko", model_version=version
                )
                for a in ids
            ]
        )
        return ids

    def start(self, **body) -> dict:
        body.setdefault("model_name", "leuko")
        body.setdefault("model_version", "2.0.0")
        body.setdefault("target", {"all": True})
        r = self.client.post("/api/v1/rollouts", json=body, headers=auth("admin"))
        assert r.status_code == 201, r.json
        return r.json

    def show(self, rollout_id: str) -> dict:
        r = self.client.get(f"/api/v1/rollouts/{rollout_id}", headers=auth("trainer"))
        assert r.status_code == 200, r.json
        return r.json

    def targets(self, rollout: dict, state: str | None = None, stage: int | None = None) -> list[str]:
        return [
            t["agent_id"]
            for t in self.show(rollout["rollout_id"])["targets"]
            if (state is None or t["state"] == state) and (stage is None or t["stage"] == stage)
        ]

    def report(
        self,
        rollout: dict,
        agent_ids: list[str],
        kind: ModelEventKind,
        version: str = "2.0.0",
        detail: str = "",
    ) -> None:
        msgs = [
            ModelEvent(
                agent_id=a,
                event=kind,
                model_name="leuko",
                model_version=version,
                rollout_id=rollout["rollout_id"],
                detail=detail,
            )
            for a in agent_ids
        ]
        self.writer.write(msgs)  # what ingest commits, then hands to the engine
        self.engine.handle(msgs)

    def status(self, agent_ids: list[str], version: str) -> None:
        msgs = [
            AgentStatus(
                agent_id=a, state=AgentState.ONLINE, lab="Lab A", model_name="leuko", model_version=version
            )
            for a in agent_ids
        ]
        self.writer.write(msgs)
        self.engine.handle(msgs)


# --- a live server and a real browser (dashboard tests) ---------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium dials Google's services at start-up, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def serve_app(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; yields its base URL."""
    with serve_in_thread(make_server("127.0.0.1", 0, app, threaded=True)) as url:
        yield url


@pytest.fixture
def page() -> Iterator[Any]:
    """A page in Debian's headless Chromium driven by Playwright; fails (never skips) without it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "Chromium is not installed: run `make test` (services.sh installs it as root) "
            "or apt-get install -y chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()
