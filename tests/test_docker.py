"""No Docker engine runs here, so check what can be checked: the compose file parses, every path
it and the Dockerfiles reference exists, every variable it reads is in .env.example, every container
runs a `leukonet` command that exists (the same entry points the tests and the demo run), and the
broker enforces identities. The broker itself is real: docker/make-certs.sh makes the TLS files and
docker/mosquitto-start.sh starts Mosquitto on docker/mosquitto.conf (paths and ports moved to a
temporary folder and free loopback ports), then the hub's admin and an agent log in over TLS."""

import json
import os
import re
import shlex
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from hub.broker.dynsec import DynSecAccounts
from hub.broker.dynsec_config import HUB_USERNAME, find_dynsec_plugin
from hub.broker.embedded import find_mosquitto
from shared.cli import main as leukonet_cli
from shared.mqtt import MqttSettings, make_client, reason_ok
from tests.conftest import free_port, wait_port
from tests.hub.mqtt_peers import Peer

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
# Files the operator creates from the documented steps (secrets, never committed).
USER_SUPPLIED = {".env"}
# Made by docker/make-certs.sh, which git-ignores its own output folder (checked below).
MADE_BY_SCRIPT = {"certs", "ca.crt"}
AGENT_RUN = "leukonet agent run --config /etc/leukonet/agent.yaml"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def resolve_command(words: list[str]) -> click.Command:
    """Walk the click tree as the shell would; fail if a word is not a command."""
    assert words[0] == "leukonet", words
    cmd: click.Command = leukonet_cli
    ctx = click.Context(leukonet_cli)
    for w in words[1:]:
        if w.startswith("-") or not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, w)
        assert sub is not None, f"`{' '.join(words)}`: no command {w!r}"
        cmd = sub
    return cmd


def test_compose_parses_and_has_the_services():
    services = compose()["services"]
    expected = {"mosquitto", "postgres", "hub", "agent-lab-a", "agent-lab-b", "trainer", "trainer-service"}
    assert expected <= set(services)


def agent_services() -> dict[str, dict]:
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if "agent" in svc.get("build", {}).get("dockerfile", "")
    }


def env_example() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    pairs = [line.partition("=") for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): value for name, _, value in pairs}


def test_every_variable_compose_reads_is_in_the_env_example():
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))  # $${...} is a literal $
    assert used and used <= set(env_example()), sorted(used - set(env_example()))


def test_agents_enroll_with_their_own_token_and_share_no_login():
    agents = agent_services()
    assert len(agents) >= 2
    token_vars = set()
    state_dir = yaml.safe_load((DOCKER / "config" / "agent.yaml").read_text())["state_dir"]
    for name, svc in agents.items():
        env = svc["environment"]
        assert not any(
            k.startswith(("LEUKONET_AGENT_MQTT__USERNAME", "LEUKONET_AGENT_MQTT__PASSWORD")) for k in env
        )
        assert "LEUKONET_AGENT_HUB__TOKEN" not in env, f"{name} still gets a shared API token"
        m = re.fullmatch(r"\$\{(LEUKONET_ENROLL_TOKEN_[A-Z0-9_]+):-\}", env["LEUKONET_ENROLL_TOKEN"])
        assert m, env["LEUKONET_ENROLL_TOKEN"]
        token_vars.add(m.group(1))
        script = svc["command"][2]
        assert f"[ ! -f {state_dir}/credentials.json ]" in script
        assert "leukonet agent enroll --config /etc/leukonet/agent.yaml" in script
        assert script.endswith(f"exec {AGENT_RUN}"), script
        assert (env["LEUKONET_AGENT_MQTT__TLS"], env["LEUKONET_AGENT_MQTT__PORT"]) == ("true", "8883")
        assert f"./certs/ca.crt:{env['LEUKONET_AGENT_MQTT__CA_FILE']}:ro" in svc["volumes"]
    assert len(token_vars) == len(agents), "two agents share one enrollment token"


def test_the_hub_is_the_brokers_dynsec_admin_and_only_tls_is_published():
    services = compose()["services"]
    hub = services["hub"]["environment"]
    assert hub["LEUKONET_HUB_MQTT__USERNAME"] == HUB_USERNAME
    assert hub["LEUKONET_HUB_ENROLLMENT__DYNAMIC_SECURITY"] == "true"
    broker = services["mosquitto"]
    # one password: the broker's first start makes the hub's login from the hub's own setting
    assert hub["LEUKONET_HUB_MQTT__PASSWORD"].startswith("${LEUKONET_HUB_MQTT__PASSWORD:?")
    assert broker["environment"]["MOSQUITTO_HUB_PASSWORD"].startswith("${LEUKONET_HUB_MQTT__PASSWORD:?")
    assert broker["ports"] == ["8883:8883"]
    assert broker["command"] == ["sh", "/leukonet/mosquitto-start.sh"]
    assert "./mosquitto-start.sh:/leukonet/mosquitto-start.sh:ro" in broker["volumes"]


def test_broker_config_enforces_identities():
    conf = (DOCKER / "mosquitto.conf").read_text()
    lines = [line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert "allow_anonymous false" in lines and "per_listener_settings false" in lines
    assert not any(line.startswith(("password_file", "acl_file")) for line in lines)
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in lines  # eclipse-mosquitto's path
    assert "plugin_opt_config_file /mosquitto/data/dynamic-security.json" in lines  # the data volume
    tls = lines[lines.index("listener 8883") + 1 :]
    assert tls[:3] == [
        "certfile /mosquitto/certs/server.crt",
        "keyfile /mosquitto/certs/server.key",
        "cafile /mosquitto/certs/ca.crt",
    ]
    assert [line for line in lines if line.startswith("listener")] == ["listener 1883", "listener 8883"]


def test_compose_paths_exist():
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        if build:
            ctx = (DOCKER / build["context"]).resolve()
            assert ctx == ROOT, name
            assert (ctx / build["dockerfile"]).is_file(), name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                p = DOCKER / src
                if p.name in MADE_BY_SCRIPT:
                    continue
                if p.name in USER_SUPPLIED:
                    assert (
                        p.name in (ROOT / ".gitignore").read_text()
                        or f"docker/{p.name}" in (ROOT / ".gitignore").read_text()
                    ), f"{p} must be git-ignored"
                    continue
                assert p.exists(), f"{name}: volume source {p} does not exist"


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("Dockerfile.*")), ids=lambda p: p.name)
def test_dockerfile_copies_and_entry_points(dockerfile: Path):
    text = dockerfile.read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for s in sources:
            assert (ROOT / s).exists(), f"{dockerfile.name}: COPY source {s} missing"
    words: list[str] = []
    for kind in ("ENTRYPOINT", "CMD"):
        m = re.search(rf"^{kind} (\[.*\])$", text, re.M)
        if m:
            words += yaml.safe_load(m.group(1))
    resolve_command(words)


def test_compose_commands_are_real_entry_points():
    for name, svc in compose()["services"].items():
        cmd = svc.get("command")
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        if cmd and cmd[0] == "leukonet":
            resolve_command(cmd)
        elif cmd and cmd[:2] == ["sh", "-c"]:
            calls = re.findall(r"leukonet [^;|&]+", cmd[2])
            assert calls, cmd
            for call in calls:
                resolve_command(shlex.split(call))
        elif name == "mosquitto":
            assert (DOCKER / Path(cmd[1]).name).is_file()
        elif name == "trainer":
            resolve_command(["leukonet", "trainer", "run"])
        elif name == "trainer-service":
            assert cmd == ["serve"]
            resolve_command(["leukonet", "trainer", *cmd])


def test_agent_image_installs_only_the_agent_extra():
    text = (DOCKER / "Dockerfile.agent").read_text()
    assert 'pip install ".[agent]"' in text
    runs = "\n".join(re.findall(r"^RUN (.+)$", text, re.M))
    assert "trainer" not in runs and "dev]" not in runs and "tensorflow" not in runs.lower()


def test_broker_config_raises_the_queue_limit():
    conf = (DOCKER / "mosquitto.conf").read_text()
    m = re.search(r"^max_queued_messages (\d+)$", conf, re.M)
    assert m and int(m.group(1)) > 1000


# --- the broker, for real: make-certs.sh, mosquitto-start.sh and mosquitto.conf ------------------


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    done = subprocess.run(
        ["sh", str(DOCKER / "make-certs.sh"), str(out), "broker.lab.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return out


def openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_certs_names_the_broker_and_keeps_keys_out_of_git(certs: Path):
    assert (certs / ".gitignore").read_text() == "*\n"
    for key in ("ca.key", "server.key"):
        assert (certs / key).stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    assert "server.crt: OK" in openssl("verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.crt"))
    san = openssl("x509", "-in", str(certs / "server.crt"), "-noout", "-ext", "subjectAltName")
    for name in ("DNS:mosquitto", "DNS:localhost", "IP Address:127.0.0.1", "DNS:broker.lab.example"):
        assert name in san, san


class ComposeBroker:
    """docker/mosquitto-start.sh on docker/mosquitto.conf, with the container's paths moved to ``root``
    and its listeners to free loopback ports (1883 -> ``plain``, 8883 -> ``tls``)."""

    def __init__(self, root: Path, certs: Path) -> None:
        exe = find_mosquitto()
        assert exe is not None, "mosquitto is not installed: run `make test` (services.sh)"
        self.root, self.plain, self.tls = root, free_port(), free_port()
        moves = {
            "plugin /usr/lib/mosquitto_dynamic_security.so": f"plugin {find_dynsec_plugin(exe)}",
            "/mosquitto/data": str(root / "data"),
            "/mosquitto/certs": str(root / "broker-certs"),
            "listener 1883\n": f"listener {self.plain} 127.0.0.1\n",
            "listener 8883\n": f"listener {self.tls} 127.0.0.1\n",
        }
        conf = (DOCKER / "mosquitto.conf").read_text()
        for old, new in moves.items():
            assert old in conf, f"docker/mosquitto.conf no longer has {old!r}"
            conf = conf.replace(old, new)
        # as root mosquitto would switch to its own user, which cannot enter pytest's 0700 tmp_path
        user = "user root\n" if os.geteuid() == 0 else ""
        (root / "mosquitto.conf").write_text(user + conf)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "MOSQUITTO_CONF": str(root / "mosquitto.conf"),
            "MOSQUITTO_DATA": str(root / "data"),
            "MOSQUITTO_CERTS_IN": str(certs),
            "MOSQUITTO_CERTS": str(root / "broker-certs"),
            "MOSQUITTO_OWNER": str(os.getuid()),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def run_script(self, hub_password: str) -> subprocess.Popen[bytes]:
        log = (self.root / "broker.log").open("ab")
        env = self.env | {"MOSQUITTO_HUB_PASSWORD": hub_password}
        cmd = ["sh", str(DOCKER / "mosquitto-start.sh")]
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.process

    def start(self, hub_password: str) -> None:
        process = self.run_script(hub_password)
        if not wait_port("127.0.0.1", self.tls, 10):
            process.kill()
            pytest.fail(f"the compose broker did not start: {(self.root / 'broker.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def settings(self, username: str | None, password: str | None, ca: Path) -> MqttSettings:
        """Over TLS to ``localhost``, as an agent outside the compose network would connect."""
        return MqttSettings(
            host="localhost", port=self.tls, username=username, password=password, tls=True, ca_file=ca
        )


@pytest.fixture
def compose_broker(tmp_path: Path, certs: Path) -> Iterator[ComposeBroker]:
    (tmp_path / "broker").mkdir()
    broker = ComposeBroker(tmp_path / "broker", certs)
    yield broker
    broker.stop()


def tls_login(settings: MqttSettings, client_id: str) -> bool:
    """True when the broker accepts ``settings``' login over TLS (CA and host name checked)."""
    reasons: list[object] = []
    answered = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        reasons.append(reason)
        answered.set()

    client = make_client(settings, client_id, persistent=False)
    client.on_connect = on_connect
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        assert answered.wait(10), f"no CONNACK from {settings.host}:{settings.port}"
        return reason_ok(reasons[0])
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_compose_broker_enforces_identities_over_tls(compose_broker: ComposeBroker, certs: Path):
    hub_password = f"hub-{uuid.uuid4().hex}"
    compose_broker.start(hub_password)
    dynsec_file = compose_broker.root / "data" / "dynamic-security.json"
    assert dynsec_file.stat().st_mode & 0o077 == 0
    assert hub_password not in dynsec_file.read_text()
    ca = certs / "ca.crt"
    admin = compose_broker.settings(HUB_USERNAME, hub_password, ca)
    assert tls_login(admin, "leukonet-hub-tls-check")
    accounts = DynSecAccounts(admin, timeout_s=5)  # the hub's account manager, over TLS
    try:
        accounts.ensure_hub_role(HUB_USERNAME)
        accounts.add_agent("lab-a-scope-1", "lab-a-password-0123")
    finally:
        accounts.close()
    assert tls_login(compose_broker.settings("lab-a-scope-1", "lab-a-password-0123", ca), "lab-a-scope-1")
    assert not tls_login(compose_broker.settings(None, None, ca), "anonymous-tls")
    assert not tls_login(compose_broker.settings("lab-a-scope-1", "wrong-password", ca), "lab-a-scope-1")
    plain = Peer(compose_broker.plain, HUB_USERNAME, hub_password, "leukonet-hub-plain")
    plain.close()
    assert plain.accepted, "the hub's plain listener refused the hub"
    # a restart keeps the file the first start made: the password in the environment is not read again
    compose_broker.stop()
    compose_broker.start("another-password-that-is-ignored")
    assert tls_login(admin, "leukonet-hub-tls-check")


def test_the_broker_start_refuses_a_placeholder_password_and_missing_certs(
    compose_broker: ComposeBroker, tmp_path: Path
):
    process = compose_broker.run_script("change-me-hub-mqtt-password")
    assert process.wait(timeout=30) == 1
    assert not (compose_broker.root / "data" / "dynamic-security.json").exists()
    assert "LEUKONET_HUB_MQTT__PASSWORD" in (compose_broker.root / "broker.log").read_text()
    compose_broker.env["MOSQUITTO_CERTS_IN"] = str(tmp_path / "no-certs")
    assert compose_broker.run_script(f"hub-{uuid.uuid4().hex}").wait(timeout=30) == 1
    assert "make-certs.sh" in (compose_broker.root / "broker.log").read_text()


# --- monitoring: Prometheus + Grafana (profile "monitoring") and the metrics they query ---------

PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
METRIC = re.compile(r"\bleukonet_[a-z0-9_]+")


def monitoring_service(name: str) -> dict:
    svc = compose()["services"][name]
    assert svc["profiles"] == ["monitoring"], f"{name} must run only with --profile monitoring"
    return svc


def scrape_jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}


def test_prometheus_scrapes_the_hub_with_a_token_file_and_the_agents_ports():
    from agents.config import MetricsConfig

    hub = scrape_jobs()["leukonet-hub"]
    assert hub["metrics_path"] == "/metrics"
    hub_port = compose()["services"]["hub"]["ports"][0].split(":")[-1]
    assert [t for c in hub["static_configs"] for t in c["targets"]] == [f"hub:{hub_port}"]
    authz = hub["authorization"]
    assert authz.get("type", "Bearer") == "Bearer" and set(authz) <= {"type", "credentials_file"}
    assert "bearer_token" not in hub and "bearer_token_file" not in hub  # the old, deprecated keys
    # the file is the compose secret, made from a variable of docker/.env: no token in any file
    prometheus = monitoring_service("prometheus")
    secret = Path(authz["credentials_file"])
    assert secret.parent == Path("/run/secrets") and secret.name in prometheus["secrets"]
    assert compose()["secrets"][secret.name]["environment"] in env_example()
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"]), "Prometheus has no login"
    # every agent of the compose file serves metrics on the compose network, none publishes the port
    agents = scrape_jobs()["leukonet-agents"]
    port = MetricsConfig().port
    targets = {t for c in agents["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:{port}" for name in agent_services()}
    for name, svc in agent_services().items():
        env = svc["environment"]
        assert (env["LEUKONET_AGENT_METRICS__ENABLED"], env["LEUKONET_AGENT_METRICS__HOST"]) == (
            "true",
            "0.0.0.0",
        )
        assert "ports" not in svc, f"{name} publishes a port"


def test_grafana_is_provisioned_and_refuses_its_placeholder_password():
    grafana = monitoring_service("grafana")
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "leukonet.yaml").read_text())[
        "providers"
    ]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    panels = dashboard_panels()
    assert panels and all(p["datasource"]["uid"] == datasource["uid"] for p in panels)
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    var = re.fullmatch(r"\$\{([A-Z_]+):\?.+\}", password)
    assert var, password
    assert f"= {env_example()[var.group(1)]} ]" in grafana["entrypoint"][2]


def dashboard_panels() -> list[dict]:
    dashboard = json.loads((GRAFANA / "dashboards" / "leukonet.json").read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    """``{metric family: type}`` from a live scrape of a hub (with an ingest worker's counters) and of
    an agent (with a model), each parsed by the Prometheus client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    from agents.config import AgentConfig
    from agents.daemon import build_agent
    from hub.extensions import hub_ext
    from hub.ingest.stats import IngestStats
    from tests.agents.helpers import make_bundle, make_keys
    from tests.hub.conftest import auth, close_app, hub_config, migrated_app

    tmp = tmp_path_factory.mktemp("scrape")
    app = migrated_app(hub_config(tmp / "hub", None))
    try:
        stats = IngestStats()
        stats.committed(1, 0, 0, 0)  # the last-commit gauge appears after the first commit
        hub_ext.for_app(app).ingest_stats = stats
        r = app.test_client().get("/metrics", headers=auth("admin"))
        assert r.status_code == 200
        texts = [r.data.decode()]
    finally:
        close_app(app)
    keys = make_keys(tmp / "keys")
    bundle, _ = make_bundle(tmp / "bundles", keys)
    cfg = AgentConfig.load(
        None,
        agent_id="scrape-1",
        watch_dir=tmp / "in",
        state_dir=tmp / "state",
        backend="fake",
        model_public_key=keys.public,
        initial_model=bundle,
        metrics={"enabled": True, "port": 0},
    )
    agent = build_agent(cfg, connect=False)
    agent.start()
    try:
        assert agent.metrics is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics.port}/metrics", timeout=10) as resp:
            texts.append(resp.read().decode())
    finally:
        agent.close()
    return {f.name: f.type for text in texts for f in text_string_to_metric_families(text)}


def series_names(families: dict[str, str]) -> set[str]:
    """What PromQL selects: ``x_total`` of a counter, ``x_bucket``/``_count``/``_sum`` of a histogram."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    return {name + s for name, kind in families.items() for s in suffixes.get(kind, [""])}


def test_every_dashboard_query_selects_a_metric_the_hub_or_an_agent_exports(exported):
    names = series_names(exported)
    queries = dashboard_queries()
    assert len(queries) >= 15
    for expr in queries:
        used = set(METRIC.findall(expr))
        assert used, f"no leukonet metric in {expr!r}"
        assert used <= names, f"{expr!r} selects {sorted(used - names)}, which nothing exports"
    used = {m for expr in queries for m in METRIC.findall(expr)}
    asked = {  # what the dashboard must show (hub: ingest, latencies, states; agents: throughput)
        "leukonet_ingest_stored_total",
        "leukonet_ingest_refused_total",
        "leukonet_ingest_batch_seconds_bucket",
        "leukonet_ingest_commit_seconds_bucket",
        "leukonet_ingest_lag_seconds_bucket",
        "leukonet_rollouts",
        "leukonet_training_jobs",
        "leukonet_agents",
        "leukonet_agent_images_classified_total",
        "leukonet_agent_inference_seconds_bucket",
        "leukonet_agent_outbox_depth",
    }
    assert asked <= used, sorted(asked - used)


def test_operations_md_lists_every_metric_and_its_promql_selects_real_ones(exported):
    page = (ROOT / "docs" / "operations.md").read_text()
    section = page.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(leukonet_[a-z0-9_]+)` \|", section, re.M))
    families = {name: kind for name, kind in exported.items() if not name.endswith("_created")}
    shown = {name + ("_total" if kind == "counter" else "") for name, kind in families.items()}
    assert listed == shown
    promql = "\n".join(re.findall(r"^```promql\n(.*?)^```", section, re.M | re.S))
    used = set(METRIC.findall(promql))
    assert used and used <= series_names(exported), sorted(used - series_names(exported))
