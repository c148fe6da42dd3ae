"""A cell model judged on whole fields: the manifest's ``cells`` section, the chain an agent runs
(finder -> crop -> IR -> decision) reproduced by hand, the whole-image baseline, and the CLI options.

The trained model is ``test_pipeline.py``'s (one training run for the trainer tests), bundled there
with ``--cells --eval-fields`` and the default rule."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from shared.bundle import read_manifest
from shared.cells.decision import decide
from shared.cells.finder import cut_crop, find_cells
from shared.cells.spec import CellAnalysisSpec, DecisionRule, FinderSpec
from shared.preprocessing import crop_and_resize, decode_image
from tests.trainer.test_ood import CellRun, unpacked_run
from tests.trainer.test_pipeline import FIELDS, IMAGE_SIZE
from trainer import cli as trainer_cli
from trainer.dataset import Split
from trainer.field_eval import FieldOutcome, binary_metrics

LABELS = ["ALL", "normal"]


# The trainer tests' one training run (test_pipeline.trained_model) happens in whichever test of
# these modules comes first: minutes on two busy cores, past the suite's 5-minute default.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def run(ml_stack: None, tmp_path_factory: pytest.TempPathFactory) -> CellRun:
    return unpacked_run(tmp_path_factory)


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # CliRunner closes its streams after each call; logging stays with pytest.
    monkeypatch.setattr(trainer_cli, "setup_logging", lambda level="INFO": None)


def _rows(work: Path) -> list[dict[str, str]]:
    with open(work / "eval" / "fields.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_manifest_declares_a_cell_model_with_both_levels_measured(run: CellRun) -> None:
    cells = run.manifest.cells
    assert cells is not None
    assert [k.value for k in cells.input_kinds] == ["cell", "field"]
    assert cells.finder.crop_side_px == 257 and cells.decision.kind == "any"
    assert cells.decision.positive_labels == ["ALL"] and cells.decision.negative_label == "normal"
    metrics: dict[str, Any] = cells.metrics
    assert set(metrics) == {"finder", "field", "whole_image"}
    assert metrics["finder"]["fields"] == FIELDS and 0.0 <= metrics["finder"]["recall"] <= 1.0
    for level in ("field", "whole_image"):
        m = metrics[level]
        assert m["n"] == FIELDS and sum(map(sum, m["confusion_matrix"])) == FIELDS
        assert m["positive_label"] == "ALL" and m["negative_label"] == "normal"
        assert set(m["ci95"]) >= {"sensitivity", "specificity", "accuracy"}
        for name in ("sensitivity", "specificity"):
            lo, hi = m["ci95"][name]
            assert lo <= m[name] <= hi
        if m["roc_auc"] is not None:
            assert m["ci95"]["roc_auc"][0] <= m["roc_auc"] <= m["ci95"]["roc_auc"][1]
    field = metrics["field"]
    assert field["failed"] == 0 and field["cells_classified"] >= FIELDS
    assert field["decision_rule"] == "any cell with p(ALL) >= 0.5"
    # Most cells cut from fields look familiar (some do not: this model learnt from single-cell
    # images, not from crops of fields, whose neighbours differ); whole fields squeezed to 96 px
    # look unlike anything it was trained on.
    assert field["unfamiliar_cell_rate"] < 0.5
    assert metrics["whole_image"]["unfamiliar_rate"] >= 0.7 > field["unfamiliar_rate"]
    report = json.loads((run.work / "eval" / "report.json").read_text())
    assert report["cells"] == metrics and report["split"] == "test"
    assert run.summary["cells"]["metrics"] == metrics


def test_each_field_is_what_an_agent_would_compute(run: CellRun) -> None:
    from trainer.export import IrRunner
    from trainer.fields import decode_field, load_fields

    cells = run.manifest.cells
    assert cells is not None
    runner = IrRunner(run.unpacked / run.manifest.artifacts["ir_fp32"], inference_precision="f32")
    rows = {r["name"]: r for r in _rows(run.work)}
    assert len(rows) == FIELDS
    for truth in load_fields(run.fields)[:3]:
        image = decode_field(truth)
        found = find_cells(image, cells.finder)
        crops = [crop_and_resize(cut_crop(image, c.centre, 257), IMAGE_SIZE) for c in found]
        probs = [dict(zip(LABELS, map(float, runner.predict(crop)), strict=True)) for crop in crops]
        decision = decide(probs, LABELS, cells.decision)
        row = rows[truth.image.name]
        assert row["truth"] == truth.label and row["kind"] == "field"
        assert int(row["cells"]) == len(found) and row["label"] == decision.label
        assert float(row["score"]) == pytest.approx(decision.scores["ALL"], abs=1e-6)
        assert int(row["positive_cells"]) == decision.positive_cells
        whole = runner.predict(crop_and_resize(image, IMAGE_SIZE))
        assert float(row["whole_score"]) == pytest.approx(float(whole[0]), abs=1e-6)
        assert row["whole_label"] == LABELS[int(np.argmax(whole))]


def test_an_image_below_the_field_size_is_classified_whole(run: CellRun) -> None:
    from trainer.export import IrRunner
    from trainer.field_eval import analyse_field

    cells = run.manifest.cells
    assert cells is not None
    runner = IrRunner(run.unpacked / run.manifest.artifacts["ir_fp32"], inference_precision="f32")
    image = decode_image(Path(Split.load(run.work / "split.json").test[0].path).read_bytes())
    assert max(image.shape[:2]) < cells.field_min_side_px
    got = analyse_field(image, runner, LABELS, cells, IMAGE_SIZE)
    probs = runner.predict(crop_and_resize(image, IMAGE_SIZE))
    assert got["kind"] == "cell" and got["cells"] == 1 and got["unfamiliar"] is None
    assert got["label"] == got["whole_label"] == LABELS[int(np.argmax(probs))]
    assert got["score"] == pytest.approx(float(probs[0]))


def _outcome(
    truth: str, label: str, score: float, whole: str, whole_score: float, flagged: bool
) -> FieldOutcome:
    return FieldOutcome(
        name=f"{truth}-{score}",
        truth=truth,
        kind="field",
        cells=4,
        label=label,
        score=score,
        positive_cells=int(label == "ALL"),
        unfamiliar_cells=int(flagged) * 4,
        unfamiliar=flagged,
        whole_label=whole,
        whole_score=whole_score,
        whole_unfamiliar=True,
        ms=1.0,
    )


def test_binary_metrics_count_fields_by_the_rule_labels() -> None:
    spec = CellAnalysisSpec(decision=DecisionRule(positive_labels=["ALL"], negative_label="normal"))
    outcomes = [
        _outcome("ALL", "ALL", 0.9, "normal", 0.2, False),
        _outcome("ALL", "ALL", 0.8, "normal", 0.3, False),
        _outcome("ALL", "normal", 0.4, "normal", 0.1, True),
        _outcome("normal", "normal", 0.1, "normal", 0.4, False),
        _outcome("normal", "ALL", 0.6, "ALL", 0.6, False),
    ]
    field = binary_metrics(outcomes, spec, whole=False)
    whole = binary_metrics(outcomes, spec, whole=True)
    assert field is not None and whole is not None
    assert field["sensitivity"] == pytest.approx(2 / 3, abs=1e-4) and field["specificity"] == 0.5
    assert field["confusion_matrix"] == [[2, 1], [1, 1]]
    assert field["roc_auc"] == pytest.approx(5 / 6, abs=1e-4)  # the normal field's 0.6 beats one ALL field
    assert field["unfamiliar_rate"] == pytest.approx(0.2)
    assert whole["sensitivity"] == 0.0 and whole["specificity"] == 0.5 and whole["unfamiliar_rate"] == 1.0
    assert binary_metrics([], spec, whole=False) is None


def _copy_work(run: CellRun, tmp_path: Path) -> Path:
    """A copy of the work folder: the bundle command rewrites eval/, which other tests read."""
    work = tmp_path / "work"
    shutil.copytree(run.work, work, ignore=shutil.ignore_patterns("checkpoints", "bundle"))
    return work


def _bundle(work: Path, run: CellRun, *extra: str) -> Any:
    args = ["bundle", "--work", str(work), "--name", "leukonet-cells", "--version", "0.2.0"]
    args += ["--signing-key", str(run.keys / "signing.pem"), "--out", str(work / "b.zip"), *extra]
    return CliRunner().invoke(trainer_cli.cli, args)


def test_bundle_command_declares_the_rule_and_evaluates_it(
    run: CellRun, tmp_path: Path, quiet_cli: None
) -> None:
    work = _copy_work(run, tmp_path)
    result = _bundle(
        work,
        run,
        "--cells",
        "--decision",
        "count",
        "--min-count",
        "2",
        "--cell-threshold",
        "0.6",
        "--crop-side",
        "257",
        "--eval-fields",
        str(run.fields),
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.splitlines()[-1])
    manifest, _, _ = read_manifest(out["bundle"])
    assert manifest.cells is not None and manifest.ood == run.manifest.ood
    rule = manifest.cells.decision
    assert (rule.kind, rule.min_count, rule.threshold) == ("count", 2, 0.6)
    field = manifest.cells.metrics["field"]
    assert field["decision_rule"] == "2+ cells with p(ALL) >= 0.6" and field["n"] == FIELDS
    # A stricter rule never calls more fields positive than "any cell at 0.5".
    loose = run.manifest.cells.metrics["field"] if run.manifest.cells else {}
    assert sum(field["confusion_matrix"][i][0] for i in (0, 1)) <= sum(
        loose["confusion_matrix"][i][0] for i in (0, 1)
    )
    # Without --cells the same work folder bundles a whole-image model that keeps its OOD flag.
    plain = _bundle(work, run)
    assert plain.exit_code == 0, plain.output
    manifest, _, _ = read_manifest(json.loads(plain.stdout.splitlines()[-1])["bundle"])
    assert manifest.cells is None and manifest.ood is not None and "ood.npz" in manifest.files


def test_cell_options_are_checked_before_any_work(run: CellRun, tmp_path: Path, quiet_cli: None) -> None:
    work = _copy_work(run, tmp_path)
    stray = _bundle(work, run, "--decision", "count")
    assert stray.exit_code == 2 and "--decision apply to cell models only; add --cells" in stray.output
    unknown = _bundle(work, run, "--cells", "--positive-label", "AML")
    assert unknown.exit_code == 1 and "names ['AML'], which the model does not have" in unknown.output
    same = _bundle(work, run, "--cells", "--negative-label", "ALL")
    assert same.exit_code == 1 and "is also a positive label" in same.output
    empty = tmp_path / "no-fields"
    empty.mkdir()
    nothing = _bundle(work, run, "--cells", "--eval-fields", str(empty))
    assert nothing.exit_code == 1 and "holds no NAME.json sidecars" in nothing.output
    assert not (work / "b.zip").exists()
    # `run` refuses a stray rule option before it trains anything.
    early = CliRunner().invoke(
        trainer_cli.cli,
        ["run", "--data", str(tmp_path), "--work", str(tmp_path / "w"), "--name", "m", "--version", "1.0.0"]
        + ["--signing-key", str(run.keys / "signing.pem"), "--min-fraction", "0.2"],
    )
    assert early.exit_code == 2 and "--min-fraction apply to cell models only" in early.output
    assert not (tmp_path / "w").exists()


def test_a_broken_field_is_counted_and_the_others_still_evaluated(run: CellRun, tmp_path: Path) -> None:
    from trainer.field_eval import evaluate_fields
    from trainer.fields import load_fields

    fields = tmp_path / "fields"
    shutil.copytree(run.fields, fields)
    victim = sorted(fields.glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated upload
    spec = CellAnalysisSpec(
        decision=DecisionRule(positive_labels=["ALL"], negative_label="normal"), finder=FinderSpec()
    )
    xml = run.unpacked / run.manifest.artifacts["ir_fp32"]
    truths = load_fields(fields)[:4]
    metrics, outcomes = evaluate_fields(truths, xml, LABELS, spec, IMAGE_SIZE)
    assert metrics["field"]["failed"] == 1 and len(outcomes) == 3 == metrics["field"]["n"]
    assert victim.name not in {o.name for o in outcomes}
    assert "unfamiliar_rate" not in metrics["field"]  # no OOD statistics given
