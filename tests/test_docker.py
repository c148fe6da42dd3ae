"""No Docker engine runs here, so check what can be checked: the compose file parses, every path
it and the Dockerfiles reference exists, and every container runs a `leukonet` command that exists
(the same entry points the tests and the demo run)."""

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from shared.cli import main as leukonet_cli

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
# Files the operator creates from the documented steps (secrets, never committed).
USER_SUPPLIED = {"passwd", ".env"}


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


def test_compose_registers_every_agent_it_runs():
    services = compose()["services"]
    script = services["register-agents"]["command"][2]
    agent_ids = {
        svc["environment"]["LEUKONET_AGENT_AGENT_ID"]
        for svc in services.values()
        if "agent" in svc.get("build", {}).get("dockerfile", "")
    }
    assert agent_ids and all(f"agents add {a} " in script for a in agent_ids)
    assert services["hub"]["depends_on"]["register-agents"] == {"condition": "service_completed_successfully"}


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
            steps = [shlex.split(step) for step in cmd[2].split("&&")]
            assert steps and all(step[0] == "leukonet" for step in steps), cmd
            for step in steps:
                resolve_command(step)
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
