"""``leukonet demo``: the whole loop on one machine, on the embedded defaults.

Starts the hub (SQLite + the broker it runs itself), generates a synthetic blood-smear data set,
queues a training job on the hub that ``leukonet trainer serve`` takes (a small TF-Slim Inception
V3: trained, frozen, exported to OpenVINO with the parity check, signed and published to the hub),
enrolls two agents (each redeems a single-use token for its own broker login and API token),
activates the model for them as they watch two folders, feeds them held-out images, and prints a
summary. Every step runs the same ``leukonet`` entry points a user would, as child
processes, so the demo exercises exactly what is shipped. Nothing here imports Flask or TensorFlow.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import requests
import yaml

from shared.bundle import generate_keypair
from shared.hubclient import HubClient, HubError

AGENTS = ("lab-a-scope-1", "lab-b-scope-1")
LABS = {"lab-a-scope-1": "Lab A", "lab-b-scope-1": "Lab B"}
MODEL_NAME = "leukonet-demo"
MODEL_VERSION = "1.0.0"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


def say(msg: str) -> None:
    click.echo(f"[demo {time.strftime('%H:%M:%S')}] {msg}", err=True)


@dataclass
class Demo:
    work: Path
    per_class: int
    heldout_per_class: int
    image_size: int
    depth_multiplier: float
    steps: int
    hub_port: int
    broker_port: int
    timeout_s: float
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    secrets_: dict[str, str] = field(default_factory=dict)
    _client: HubClient | None = None

    # --- processes --------------------------------------------------------------------------
    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shared.cli", *args]

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.work / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.children[name] = proc
        return proc

    def run_step(self, name: str, args: list[str], env_extra: dict[str, str] | None = None) -> str:
        """Run a child to completion, its stderr (progress) to ours, stdout captured and logged.

        Secrets go in ``env_extra``, never in ``args``: arguments show in the console and in ``ps``.
        While it runs the child is one of :attr:`children`, so an interrupted demo stops it with
        SIGTERM (letting ``trainer serve`` stop its own training child) rather than SIGKILL.
        """
        say(f"{name}: {' '.join(args[3:])}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, start_new_session=True)  # noqa: S603
        self.children[name] = proc
        try:
            stdout, _ = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise DemoError(f"step {name!r} took longer than {self.timeout_s:g} s") from exc
        del self.children[name]
        out = stdout.decode(errors="replace")
        (self.work / "logs" / f"{name}.out").write_text(out)
        if proc.returncode != 0:
            raise DemoError(
                f"step {name!r} failed with exit code {proc.returncode}; output in "
                f"{self.work / 'logs' / (name + '.out')}"
            )
        return out

    def check_alive(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                log = self.work / "logs" / f"{name}.log"
                raise DemoError(f"{name} exited with code {proc.returncode}; see {log}")

    def stop_all(self) -> None:
        for name, proc in reversed(list(self.children.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    say(f"{name} did not stop in 20 s; killing it")
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)

    # --- hub API ----------------------------------------------------------------------------
    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def api(self, method: str, path: str, **kw: Any) -> Any:
        """``method /api/v1{path}`` as the demo's admin; a refusal stops the demo with the hub's message."""
        if self._client is None:
            self._client = HubClient(self.hub_url, self.secrets_["admin_token"])
        try:
            return self._client.json(method, path, **kw)
        except HubError as exc:
            raise DemoError(f"hub {method} {path}: {exc}") from exc

    def wait_for(self, what: str, cond: Any, timeout: float, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            value = cond()
            if value:
                return value
            time.sleep(interval)
        raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.work / 'logs'}")

    # --- steps ------------------------------------------------------------------------------
    def prepare(self) -> None:
        for sub in ("hub", "agents", "train", "data", "logs", "keys", "scopes"):
            shutil.rmtree(self.work / sub, ignore_errors=True)
            (self.work / sub).mkdir(parents=True)
        self.secrets_ = {
            k: secrets.token_urlsafe(24)
            for k in ("admin_token", "trainer_token", "secret_key", "admin_password")
        }
        generate_keypair(self.work / "keys" / "signing.pem", self.work / "keys" / "signing.pub.pem")

    def start_hub(self) -> None:
        cfg = {
            "database_url": f"sqlite:///{(self.work / 'hub' / 'hub.db').resolve()}",
            "data_dir": str((self.work / "hub").resolve()),
            "host": "127.0.0.1",
            "port": self.hub_port,
            "public_url": self.hub_url,
            "secret_key": self.secrets_["secret_key"],
            "admin_username": "admin",
            "admin_password": self.secrets_["admin_password"],
            # bootstrap tokens for the demo's own steps; agents enroll for their own credentials
            "tokens": [
                {"name": "demo-admin", "token": self.secrets_["admin_token"], "role": "admin"},
                {"name": "demo-trainer", "token": self.secrets_["trainer_token"], "role": "trainer"},
            ],
            "trusted_keys": [str((self.work / "keys" / "signing.pub.pem").resolve())],
            "mqtt": {"host": "127.0.0.1", "port": self.broker_port},
            "broker": {"embedded": True, "port": self.broker_port},
        }
        path = self.work / "hub" / "hub.yaml"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        say(f"starting hub on {self.hub_url} (SQLite, embedded broker on port {self.broker_port})")
        self.start("hub", self.cli("hub", "serve", "--config", str(path)))

        def healthy() -> bool:
            try:
                return requests.get(self.hub_url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        self.wait_for("the hub's /healthz", healthy, 90)

    def train_and_publish(self) -> dict[str, Any]:
        data = self.work / "data"
        self.run_step(
            "generate-train",
            self.cli(
                "trainer",
                "generate",
                "--out",
                str(data / "train"),
                "--per-class",
                str(self.per_class),
                "--image-size",
                str(max(2 * self.image_size, 160)),
                "--seed",
                "1",
            ),
        )
        self.run_step(
            "generate-heldout",
            self.cli(
                "trainer",
                "generate",
                "--out",
                str(data / "heldout"),
                "--per-class",
                str(self.heldout_per_class),
                "--image-size",
                str(max(2 * self.image_size, 160)),
                "--seed",
                "2",
            ),
        )
        # The operator's way: queue a training job on the hub, let a trainer service take it.
        job = self.api(
            "POST",
            "/training-jobs",
            json={
                "name": MODEL_NAME,
                "version": MODEL_VERSION,
                "dataset": "train",
                "mode": "scratch",
                "image_size": self.image_size,
                "depth_multiplier": self.depth_multiplier,
                "steps": self.steps,
            },
        )
        say(f"queued training job {job['job_id']} on the hub; starting `leukonet trainer serve` for it")
        self.run_step(
            "trainer-serve",
            self.cli("trainer", "serve", "--max-jobs", "1"),
            env_extra={
                "LEUKONET_TRAINER_HUB_URL": self.hub_url,
                "LEUKONET_TRAINER_TOKEN": self.secrets_["trainer_token"],
                "LEUKONET_TRAINER_SIGNING_KEY": str(self.work / "keys" / "signing.pem"),
                "LEUKONET_TRAINER_DATA_ROOT": str(data),
                "LEUKONET_TRAINER_WORK_ROOT": str(self.work / "train"),
                "LEUKONET_TRAINER_WORKER": "demo-trainer",
                "LEUKONET_TRAINER_POLL_INTERVAL_S": "1",
                "LEUKONET_TRAINER_PROGRESS_INTERVAL_S": "2",
            },
        )
        done = self.api("GET", f"/training-jobs/{job['job_id']}")
        if done["state"] != "succeeded":
            raise DemoError(
                f"training job {job['job_id']} ended {done['state']}: {done.get('error')}; "
                f"log in {self.work / 'logs'}"
            )
        result: dict[str, Any] = {**done["result"], "job_id": job["job_id"]}
        return result

    def start_agents(self) -> None:
        for agent_id in AGENTS:
            watch = self.work / "scopes" / agent_id
            watch.mkdir(parents=True, exist_ok=True)
            cfg = {
                "agent_id": agent_id,
                "lab": LABS[agent_id],
                "watch_dir": str(watch.resolve()),
                "state_dir": str((self.work / "agents" / agent_id).resolve()),
                "backend": "openvino",
                "device": "AUTO",
                "mqtt": {"host": "127.0.0.1", "port": self.broker_port},
                "hub": {"url": self.hub_url},
                "model_public_key": str((self.work / "keys" / "signing.pub.pem").resolve()),
                "status_interval_s": 5,
                "settle_s": 0.3,
            }
            path = self.work / "agents" / f"{agent_id}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            path.chmod(0o600)
            # As in production: an admin issues a single-use token bound to this agent, and the
            # agent redeems it for its own broker login and API token (its state dir, mode 0600).
            issued = self.api(
                "POST", "/agents/enrollment-tokens", json={"agent_id": agent_id, "lab": LABS[agent_id]}
            )
            self.run_step(
                f"enroll-{agent_id}",
                self.cli("agent", "enroll", "--config", str(path), "--hub", self.hub_url),
                env_extra={"LEUKONET_ENROLL_TOKEN": issued["token"]},
            )
            self.start(agent_id, self.cli("agent", "run", "--config", str(path)))
        say(f"started agents {', '.join(AGENTS)}")

    def activate(self) -> None:
        for agent_id in AGENTS:
            self.api(
                "PUT",
                f"/agents/{agent_id}/desired",
                json={"model_name": MODEL_NAME, "model_version": MODEL_VERSION},
            )
        say(f"desired model {MODEL_NAME} {MODEL_VERSION} set for both agents; waiting for them to report it")

        def all_active() -> bool:
            items = self.api("GET", "/agents")["items"]
            active = {
                a["agent_id"]
                for a in items
                if a.get("model_version") == MODEL_VERSION and a.get("state") == "online"
            }
            return set(AGENTS) <= active

        self.wait_for("both agents to run the new model", all_active, 180)

    def feed(self) -> dict[str, str]:
        """Copy held-out images, alternating between the two scopes. Returns image name -> true label."""
        truth: dict[str, str] = {}
        files = sorted((self.work / "data" / "heldout").glob("*/*"))
        for i, f in enumerate(files):
            label = f.parent.name
            name = f"heldout-{i:04d}{f.suffix}"
            truth[name] = label
            dest = self.work / "scopes" / AGENTS[i % len(AGENTS)]
            tmp = dest / f".{name}.part"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dest / name)  # appear whole, as a microscope's export would
        say(f"fed {len(files)} held-out images to the two scopes")
        return truth

    def collect(self, truth: dict[str, str]) -> list[dict[str, Any]]:
        def fetch_all() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            page = 1
            while True:
                body = self.api("GET", "/classifications", params={"page": page, "per_page": 500})
                items += body["items"]
                if len(items) >= body["total"] or not body["items"]:
                    return items
                page += 1

        def done() -> list[dict[str, Any]] | None:
            items = [r for r in fetch_all() if r["image_name"] in truth]
            return items if len({r["image_name"] for r in items}) >= len(truth) else None

        result: list[dict[str, Any]] = self.wait_for("every held-out result to reach the hub", done, 300, 1.0)
        return result

    def summarise(
        self, train: dict[str, Any], results: list[dict[str, Any]], truth: dict[str, str], started: float
    ) -> dict[str, Any]:
        correct = sum(1 for r in results if r["label"] == truth[r["image_name"]])
        per_agent = Counter(r["agent_id"] for r in results)
        summary = {
            "images_classified": len(results),
            "held_out_accuracy": round(correct / len(results), 4) if results else 0.0,
            "correct": correct,
            "per_agent": dict(per_agent),
            "low_confidence": sum(1 for r in results if r.get("low_confidence")),
            "model": f"{MODEL_NAME} {MODEL_VERSION}",
            "trainer_test_metrics": train.get("metrics", {}),
            "parity": train.get("parity", {}),
            "training_job": train.get("job_id"),
            "dashboard_url": self.hub_url + "/",
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        (self.work / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
