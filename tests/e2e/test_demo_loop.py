"""The whole loop, small: `leukonet demo` with real TF training and freezing (a job queued on the hub
and run by `leukonet trainer serve`), real OpenVINO inference in two agent processes, the hub on
SQLite with its embedded broker."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

#: Training steps. The synthetic set is learnt early: validation accuracy is 1.0 from the first
#: validation pass (step 100) on, and each further step costs the suite time without changing what
#: the test shows (the demo's own default stays 300).
STEPS = 100


def test_demo_loop_end_to_end(tmp_path: Path):
    work = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "demo",
            "--no-wait",
            "--work",
            str(work),
            "--per-class",
            "50",
            "--heldout-per-class",
            "10",
            "--image-size",
            "96",
            "--depth-multiplier",
            "0.35",
            "--steps",
            str(STEPS),
            "--hub-port",
            "0",
            "--broker-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((work / "logs").glob("*"))
        if p.is_file()
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr[-5000:]}\n{logs}"
    assert "leukonet demo summary" in proc.stdout
    summary = json.loads((work / "summary.json").read_text())
    assert summary["images_classified"] == 20
    assert set(summary["per_agent"]) == {"lab-a-scope-1", "lab-b-scope-1"}
    # A 96 px, 0.35-width network after STEPS steps on the synthetic set is well above chance.
    assert summary["held_out_accuracy"] >= 0.7, summary
    assert summary["parity"]["max_abs_diff_fp32"] <= 1e-4, summary["parity"]
    # Trained as a hub job: the trainer service forwarded its progress and finished the job.
    assert summary["training_job"] and summary["trainer_test_metrics"]["accuracy"] >= 0.7
    serve_log = (work / "logs" / "trainer-serve.out").read_text()
    assert json.loads(serve_log.strip().splitlines()[-1])["jobs"] == 1
    # The dashboard was up and protected: the demo prints where it is.
    assert summary["dashboard_url"].startswith("http://127.0.0.1:")
    # ... and how to sign in to it, as the first admin the hub created from its config
    assert "log in as              admin / " in proc.stdout
    # Each agent enrolled itself: its own broker login and API token, private to it.
    for agent in ("lab-a-scope-1", "lab-b-scope-1"):
        creds = work / "agents" / agent / "credentials.json"
        assert creds.exists() and creds.stat().st_mode & 0o077 == 0, agent
        assert json.loads(creds.read_text())["agent_id"] == agent
    # The embedded broker enforced identities: dynamic security, no anonymous access.
    conf = (work / "hub" / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "dynamic_security" in conf
