"""Cell-level results through the API and the dashboard (Flask test client): the list's new fields and
filters (unfamiliar, input_kind, specimen_id, with cursors), ``GET /classifications/{result_id}`` with
the cells, the result page (field drawn as SVG boxes, one card per cell, decision, flag, the "image not
received" notice), the fleet table's links, badges and counts, and the models page's cell analysis and
unfamiliar flag from a signed bundle's manifest."""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hub.api.classifications import ResultFilters
from hub.ingest.writer import IngestWriter
from shared.bundle import Manifest, TensorSpec, build_bundle, digest_files, load_private_key
from shared.cells.spec import CellAnalysisSpec, InputKind, OodSpec
from shared.preprocessing_spec import PreprocessingSpec
from tests.hub.cells_results import RULE, make_field_result
from tests.hub.conftest import Keys, auth, login_as, make_result, upload_bundle

T = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
FINDER = {"recall": 0.9412, "recall_ci": [0.9012, 0.9663], "precision": 0.88, "precision_ci": [0.84, 0.91]}
FIELD_CI = {"sensitivity": [0.87, 0.98], "specificity": [0.81, 0.95], "roc_auc": [0.94, 0.99]}
METRICS = {
    # the finder's figures with <name>_ci beside them; field-level as trainer.evaluate.Metrics writes them
    # (roc_auc, one ci95 mapping, counts in the confusion matrix); whole-image with auc and n_pos / n_neg
    "finder": {**FINDER, "iou": 0.5, "ms_per_field": 41.5, "fields": 120},
    "field": {"n": 120, "sensitivity": 0.95, "specificity": 0.9, "roc_auc": 0.97, "ci95": FIELD_CI,
              "confusion_matrix": [[57, 3], [6, 54]]},
    "whole_image": {"n": 120, "sensitivity": 0.6, "specificity": 0.85, "auc": 0.74, "auc_ci": [0.65, 0.82],
                    "n_pos": 60, "n_neg": 60},
}  # fmt: skip


def build_cells_bundle(out: Path, keys: Keys, version: str = "1.0.0") -> Path:
    """A signed bundle of leuko ``version`` whose manifest has ``cells`` (rule, metrics) and ``ood``."""
    src = out.parent / f"src-cells-{uuid.uuid4().hex[:6]}"
    for sub in ("ir/fp32", "ir/fp16"):
        (src / sub).mkdir(parents=True)
    (src / "model.pb").write_bytes(random.Random(1).randbytes(2000))
    for prec in ("fp32", "fp16"):
        (src / "ir" / prec / "model.xml").write_text(f"<net precision='{prec}'/>")
        (src / "ir" / prec / "model.bin").write_bytes(prec.encode() * 64)
    (src / "ood.npz").write_bytes(b"stats")
    rel = ["model.pb", "ir/fp32/model.xml", "ir/fp32/model.bin", "ir/fp16/model.xml", "ir/fp16/model.bin"]
    manifest = Manifest(
        name="leuko",
        version=version,
        labels=["ALL", "normal"],
        input=TensorSpec(name="input", shape=[1, 75, 75, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, 2], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=75),
        artifacts={
            "frozen_graph": "model.pb",
            "ir_fp32": "ir/fp32/model.xml",
            "ir_fp16": "ir/fp16/model.xml",
        },
        files=digest_files(src, [*rel, "ood.npz"]),
        metrics={"accuracy": 0.9},
        cells=CellAnalysisSpec(decision=RULE, metrics=METRICS),
        ood=OodSpec(
            stats_file="ood.npz",
            feature_output="prelogits",
            feature_dim=2048,
            threshold=24.5,
            target_flag_rate=0.01,
            calibration_images=800,
            held_out_flag_rate=0.0125,
        ),
    )
    build_bundle(src, manifest, load_private_key(keys.private), out)
    return out


@pytest.fixture
def stored(db) -> dict[str, Any]:
    """v1, v2, a flagged single cell, two fields (one unfamiliar) and an empty field, a minute apart."""
    results = {
        "v1": make_result(schema_version=1, captured_at=T),
        "v2": make_result(schema_version=2, precision="FP32", captured_at=T + timedelta(minutes=1)),
        "cell": make_result(
            input_kind=InputKind.CELL,
            unfamiliar=True,
            ood_score=40.0,
            label="normal",
            confidence=0.51,
            captured_at=T + timedelta(minutes=2),
        ),
        "field": make_field_result(specimen_id="S-1", captured_at=T + timedelta(minutes=3)),
        "odd": make_field_result(
            specimen_id="S-1",
            unfamiliar=True,
            ood_score=55.5,
            image_name="<img src=x onerror=alert(1)>.png",
            captured_at=T + timedelta(minutes=4),
        ),
        "empty": make_field_result(cells=[], specimen_id="S-2", captured_at=T + timedelta(minutes=5)),
    }
    assert IngestWriter(db).write(list(results.values())).stored == len(results)
    return results


def items(client, query: str = "", role: str = "trainer") -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/classifications?per_page=500{query}", headers=auth(role))
    assert r.status_code == 200, r.json
    return r.json["items"]


def ids(listed: list[dict[str, Any]]) -> list[str]:
    return [i["result_id"] for i in listed]


# --- API --------------------------------------------------------------------------------------


def test_the_list_carries_the_cell_fields_but_not_the_cells(client, stored):
    listed = {i["result_id"]: i for i in items(client)}
    field, cell, v1 = (listed[str(stored[k].result_id)] for k in ("field", "cell", "v1"))
    assert "cells" not in field
    assert field["input_kind"] == "field" and field["cell_counts"] == {"ALL": 1, "normal": 2}
    assert field["decision_rule"] == RULE.describe() and field["specimen_id"] == "S-1"
    assert (field["unfamiliar"], field["ood_score"]) == (False, 4.0)
    assert (cell["input_kind"], cell["unfamiliar"], cell["ood_score"], cell["cell_counts"]) == (
        "cell",
        True,
        40.0,
        None,
    )
    assert (v1["input_kind"], v1["unfamiliar"], v1["ood_score"], v1["specimen_id"]) == (
        None,
        False,
        None,
        None,
    )


def test_filters_unfamiliar_input_kind_and_specimen(client, stored):
    def want(*keys: str) -> list[str]:
        return [
            str(stored[k].result_id) for k in sorted(keys, key=lambda k: stored[k].captured_at, reverse=True)
        ]

    assert ids(items(client, "&unfamiliar=true")) == want("cell", "odd")
    assert ids(items(client, "&unfamiliar=false")) == want("v1", "v2", "field", "empty")
    assert ids(items(client, "&input_kind=field")) == want("field", "odd", "empty")
    assert ids(items(client, "&input_kind=cell")) == want("cell")
    assert ids(items(client, "&specimen_id=S-1")) == want("field", "odd")
    assert ids(items(client, "&specimen_id=S-1&unfamiliar=true")) == want("odd")
    page = client.get("/api/v1/classifications?input_kind=field", headers=auth("trainer")).json
    assert page["total"] == 3
    for bad, name in (("unfamiliar=maybe", "unfamiliar"), ("input_kind=smear", "input_kind")):
        r = client.get(f"/api/v1/classifications?{bad}", headers=auth("trainer"))
        assert r.status_code == 400 and name in r.json["error"]["message"], r.json


def test_cursors_carry_the_new_filters_and_old_cursors_stay_valid(client, stored):
    first = client.get("/api/v1/classifications?per_page=1&input_kind=field", headers=auth("trainer")).json
    cursor = first["next_cursor"]
    nxt = client.get(
        f"/api/v1/classifications?per_page=1&input_kind=field&cursor={cursor}", headers=auth("trainer")
    )
    assert ids(first["items"] + nxt.json["items"]) == [str(stored[k].result_id) for k in ("empty", "odd")]
    other = client.get(
        f"/api/v1/classifications?per_page=1&input_kind=cell&cursor={cursor}", headers=auth("trainer")
    )
    assert other.status_code == 400 and "input_kind" in other.json["error"]["message"]
    # a cursor issued before these filters existed (agent and label only) keeps its digest
    old = json.dumps(["scope-1", "ALL", None, None])
    assert ResultFilters("scope-1", "ALL").fingerprint() == hashlib.sha256(old.encode()).hexdigest()[:16]
    assert (
        ResultFilters("scope-1", "ALL", unfamiliar=False).fingerprint()
        != ResultFilters("scope-1", "ALL").fingerprint()
    )


def test_one_result_with_its_cells(client, stored):
    field = stored["field"]
    r = client.get(f"/api/v1/classifications/{field.result_id}", headers=auth("trainer"))
    assert r.status_code == 200, r.json
    body = r.json
    assert body["result_id"] == str(field.result_id) and body["cell_counts"] == field.cell_counts
    assert [c["index"] for c in body["cells"]] == [0, 1, 2]
    for got, want in zip(body["cells"], field.cells or [], strict=True):
        assert got["box"] == list(want.box)
        assert (got["label"], got["confidence"], got["probabilities"]) == (
            want.label,
            want.confidence,
            want.probabilities,
        )
        assert (got["unfamiliar"], got["ood_score"]) == (want.unfamiliar, want.ood_score)
    single = client.get(f"/api/v1/classifications/{stored['cell'].result_id}", headers=auth("trainer")).json
    assert single["cells"] == [] and single["unfamiliar"] is True
    missing = client.get(f"/api/v1/classifications/{uuid.uuid4()}", headers=auth("trainer"))
    assert missing.status_code == 404 and missing.json["error"]["code"] == "result_not_found"
    bad = client.get("/api/v1/classifications/not-a-uuid", headers=auth("trainer"))
    assert bad.status_code == 400 and "result_id" in bad.json["error"]["message"]
    assert client.get(f"/api/v1/classifications/{field.result_id}", headers=auth("agent")).status_code == 403
    assert client.get(f"/api/v1/classifications/{field.result_id}").status_code == 401


def test_the_detail_route_is_in_the_openapi_document(client):
    doc = client.get("/api/v1/openapi.json").json
    op = doc["paths"]["/api/v1/classifications/{result_id}"]["get"]
    assert op["parameters"][0]["schema"]["format"] == "uuid"
    assert set(op["responses"]) >= {"200", "400", "401", "403", "404"}
    cells = doc["components"]["schemas"]["ClassificationDetail"]["properties"]["cells"]
    assert cells["items"]["$ref"].endswith("/CellOut")
    listed = {p["name"] for p in doc["paths"]["/api/v1/classifications"]["get"]["parameters"]}
    assert {"unfamiliar", "input_kind", "specimen_id"} <= listed


# --- the result page --------------------------------------------------------------------------


def page(client, result_id: Any) -> str:
    r = client.get(f"/results/{result_id}")
    assert r.status_code == 200, r.data[:500]
    html = r.data.decode()
    assert "<script>" not in html and "<style" not in html and " style=" not in html  # the CSP allows neither
    return html


def test_a_field_result_page_draws_every_cell(app, client, stored, make_bundle, keys, tmp_path):
    assert client.get(f"/results/{stored['field'].result_id}").status_code == 302  # signed out: to /login
    login_as(app, client, "viewer")
    field = stored["odd"]
    html = page(client, field.result_id)
    n = len(field.cells or [])
    assert len(re.findall(r'<rect class="box ', html)) == n
    assert len(re.findall(r'<article class="cell-card', html)) == n
    numbers = re.findall(r'<a href="#box-\d+" class="cell-number">(\d+)</a>', html)
    assert numbers == ["1", "2", "3"]
    assert 'id="result-unfamiliar"' in html
    assert html.count('class="badge unfamiliar"') == 2  # the field's and cell 3's
    # the model is not registered: no label is known to be blast-positive, each has its own colour
    assert "lab-pos" not in html
    assert html.count('<rect class="box lab-0"') == 1 and html.count('<rect class="box lab-1') == 2
    assert "Image not received." in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html  # the hostile image name, escaped
    assert RULE.describe().replace(">", "&gt;") in html
    assert "score 55.5" in html and "blast-positive labels are unknown" in html
    # the frame runs from the origin to the farthest box corner (the result carries no image size)
    far = (
        max(c.box[0] + c.box[2] for c in field.cells or []),
        max(c.box[1] + c.box[3] for c in field.cells or []),
    )
    assert f"({far[0]} × {far[1]} px;" in html
    box = (field.cells or [])[0].box
    assert f'x="{box[0]}" y="{box[1]}" width="{box[2]}" height="{box[3]}"' in html

    # once its model is registered, blast-positive labels (the rule's) take the warning colour
    path = build_cells_bundle(tmp_path / "cells.zip", keys)
    assert upload_bundle(client.application.test_client(), path).status_code == 201
    html = page(client, field.result_id)
    assert html.count('<rect class="box lab-pos') == 1  # cell 1 is ALL
    assert len(re.findall(r'<rect class="box lab-0( unfamiliar)?"', html)) == 2  # the normal ones
    assert "flagged above 24.5" in html and "Blast-positive labels (ALL)" in html


def test_an_empty_field_and_a_single_cell(app, client, stored):
    login_as(app, client, "viewer")
    empty = page(client, stored["empty"].result_id)
    assert 'id="no-cells"' in empty and '<svg id="field-svg"' not in empty and "cell-card" not in empty
    cell = page(client, stored["cell"].result_id)
    assert "Single cell" in cell and 'id="result-unfamiliar"' in cell and "score 40" in cell
    assert 'id="result-bar"' in cell and "51.0%" in cell and "49.0%" in cell
    assert "Image not received." in cell and "field-svg" not in cell
    old = page(client, stored["v1"].result_id)
    assert "no score reported" not in old and 'id="result-unfamiliar"' not in old
    assert client.get(f"/results/{uuid.uuid4()}").status_code == 404
    assert client.get("/results/not-a-uuid").status_code == 404


def test_the_fleet_table_links_results_and_shows_flags_and_counts(app, client, stored):
    login_as(app, client, "viewer")
    html = client.get("/").data.decode()
    for r in stored.values():
        assert f'href="/results/{r.result_id}"' in html
    rows = re.findall(r"<tr(?: class=\"low\")?>\s*<td class=\"time\".*?</tr>", html, re.S)
    by_id = {re.search(r'/results/([0-9a-f-]+)"', row).group(1): row for row in rows}  # type: ignore[union-attr]
    assert (
        "unfamiliar" in by_id[str(stored["odd"].result_id)]
        and "unfamiliar" in by_id[str(stored["cell"].result_id)]
    )
    assert "unfamiliar" not in by_id[str(stored["field"].result_id)]
    assert "ALL 1 · normal 2" in by_id[str(stored["field"].result_id)]
    assert "no cells" in by_id[str(stored["empty"].result_id)]
    assert '<td class="cells-count">—</td>' in by_id[str(stored["v2"].result_id)]


def test_the_models_page_shows_cell_analysis_and_the_unfamiliar_flag(
    app, client, keys, tmp_path, make_bundle
):
    assert upload_bundle(client, build_cells_bundle(tmp_path / "cells.zip", keys)).status_code == 201
    assert upload_bundle(client, make_bundle(version="0.9.0")).status_code == 201  # neither section
    login_as(app, client, "viewer")
    html = client.get("/models").data.decode()
    section = html[html.index('id="cell-analysis"') :]
    assert 'id="cells-leuko-1.0.0"' in section and 'id="cells-leuko-0.9.0"' not in section
    assert "any cell with p(ALL) &gt;= 0.5" in section and "otherwise normal" in section
    assert "0.9412 (95 % CI 0.901–0.966)" in section  # finder recall
    assert "0.88 (95 % CI 0.84–0.91)" in section  # finder precision
    levels = re.search(r'<table class="levels">.*?</table>', section, re.S)
    assert levels is not None
    text = levels.group(0)
    assert '0.95 (95 % CI 0.87–0.98)</td><td class="num">0.6</td>' in text  # sensitivity, field vs whole
    assert '0.97 (95 % CI 0.94–0.99)</td><td class="num">0.74 (95 % CI 0.65–0.82)</td>' in text  # AUC
    assert '<th>positive fields</th><td class="num">60</td><td class="num">60</td>' in text  # from the matrix
    ood = re.search(r'<table class="pairs ood">.*?</table>', section, re.S)
    assert ood is not None
    for text in ("mahalanobis_pca", "24.5", "1.00%", "1.25%", "800", "25% of its cells are"):
        assert text in ood.group(0), text
    api = client.get("/api/v1/models/leuko/1.0.0", headers=auth("trainer")).json
    assert api["cells"]["decision"]["positive_labels"] == ["ALL"] and api["ood"]["threshold"] == 24.5
    assert client.get("/api/v1/models/leuko/0.9.0", headers=auth("trainer")).json["cells"] is None


def test_the_drawing_helpers_hold_odd_input():
    from hub.web.model_sections import model_sections
    from hub.web.results import field_frame, label_classes, number_y, probability_bar

    classes = label_classes(["normal", "ALL", "AML", "normal", "other"], positive=["ALL", "AML"])
    assert classes == {"normal": "lab-0", "ALL": "lab-pos", "AML": "lab-pos", "other": "lab-1"}
    # probabilities summing over 1 (stored as sent) never draw past the bar's end
    bar = probability_bar({"ALL": 0.8, "normal": 0.7, "other": 2.0}, ["ALL", "normal", "other"], classes)
    assert [s["label"] for s in bar] == ["ALL", "normal"] and bar[-1]["x"] + bar[-1]["width"] == 100.0
    assert field_frame([]) is None
    frame = field_frame([{"box": [0, 0, 10, 10]}, {"box": [2500, 1800, 92, 144]}])
    assert frame is not None and (frame["extent_width"], frame["extent_height"]) == (2592, 1944)
    assert (
        frame["width"] == round(2592 * 1.01 * 10) / 10 and number_y(0, frame["font"]) > 0
    )  # inside the frame
    # free-form metrics of any shape are shown as text or a dash, never an error
    manifest = build_manifest_dict(
        {"finder": "not a mapping", "field": {"sensitivity": "n/a", "roc_auc": None, "ci95": [1, 2]}}
    )
    shown = model_sections(manifest)
    assert shown is not None and shown["cells"]["finder"] == []
    assert {h: f for h, f, _ in shown["cells"]["levels"]} == {"sensitivity": "n/a", "AUC": "—"}
    assert model_sections({"name": "x", "cells": {"decision": "broken"}, "ood": None}) is None


def build_manifest_dict(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "leuko",
        "cells": CellAnalysisSpec(decision=RULE, metrics=metrics).model_dump(mode="json"),
    }
