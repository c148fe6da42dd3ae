"""Evidence images on the hub: PUT by agents (originals verified by their key, previews by their
declared digest and a bounded decode), GET by the people who review results (not viewers, services
or agents), idempotence, size and pixel caps, hostile bodies, the OpenAPI document, and retention
(expired rows and files deleted and audited, orphan files swept)."""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from hub.config import HubConfig, RetentionSection
from hub.db.models import AuditEntry
from hub.evidence import EvidenceImage, EvidenceStore
from hub.extensions import hub_ext
from hub.identity.tokens import create_token
from hub.retention import Retention, RetentionError
from hub.roles import Role
from shared.clock import utcnow
from tests.hub.conftest import auth, hub_config, login_as
from tests.hub.test_enrollment import RecordingAccounts, bearer, enroll, issue
from tests.hub.test_openapi import CHECKS, DOC, closing

URL = "/api/v1/evidence/{}"


def png(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    assert ok
    return bytes(buf.tobytes())


def jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    assert ok
    return bytes(buf.tobytes())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(client, key: str, body: bytes, kind: str = "original", digest: str | None = None, **headers: Any):
    h = {**auth("agent"), "X-Evidence-Kind": kind, **headers}
    if digest is not None:
        h["X-Content-SHA256"] = digest
    return client.put(URL.format(key), data=body, headers=h, content_type="application/octet-stream")


def fetch(client, key: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    """``GET`` (or ``HEAD``) the evidence ``key``; the body is read and the file behind it closed."""
    r = client.open(URL.format(key), method=method, headers=headers or {})
    r.get_data()
    r.close()
    return r


def store_of(app) -> EvidenceStore:
    return hub_ext.for_app(app).evidence


# --- upload and read back ------------------------------------------------------------------------


def test_an_original_is_stored_by_its_key_and_served_to_reviewers_byte_identical(app, client):
    body = png()
    r = put(client, sha(body), body)
    assert r.status_code == 201, r.json
    meta = r.json
    assert meta["created"] is True and meta["kind"] == "original" and meta["content_type"] == "image/png"
    assert (meta["width"], meta["height"], meta["size_bytes"]) == (40, 30, len(body))
    assert meta["agent_id"] == "t-agent" and meta["content_sha256"] == sha(body)
    key = sha(body)
    stored = store_of(app).directory / key[:2] / key[2:4] / key  # content-addressed: <dir>/ab/cd/<sha256>
    assert stored.read_bytes() == body
    got = fetch(client, key, auth("admin"))
    assert got.status_code == 200 and got.data == body
    assert got.mimetype == "image/png"
    assert got.headers["Cache-Control"] == "private, no-cache"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["X-Evidence-Kind"] == "original" and got.headers["X-Content-SHA256"] == key
    assert got.headers["ETag"] == f'"{key}"'
    again = fetch(client, key, {**auth("admin"), "If-None-Match": f'"{key}"'})
    assert again.status_code == 304 and again.data == b""
    head = fetch(client, key, auth("admin"), method="HEAD")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(body)


def test_an_existing_key_answers_200_and_changes_nothing(app, client):
    body = png(seed=1)
    key = sha(body)
    assert put(client, key, body).status_code == 201
    # the same key again, even with other bytes and kind: nothing is read or changed
    r = put(client, key, b"something else entirely", kind="preview", digest=sha(b"x"))
    assert r.status_code == 200 and r.json["created"] is False and r.json["kind"] == "original"
    assert store_of(app).path(key).read_bytes() == body
    with hub_ext.for_app(app).db.session() as s:
        assert len(list(s.scalars(select(EvidenceImage)))) == 1


def test_a_preview_is_checked_against_its_declared_digest_and_decoded(app, client):
    original_key = sha(b"the original file the agent read")
    preview = jpeg(64, 48)
    r = put(client, original_key, preview, kind="preview", digest=sha(preview))
    assert r.status_code == 201, r.json
    assert r.json["kind"] == "preview" and r.json["content_type"] == "image/jpeg"
    assert (r.json["width"], r.json["height"]) == (64, 48) and r.json["content_sha256"] == sha(preview)
    got = fetch(client, original_key, auth("admin"))
    assert got.data == preview and got.mimetype == "image/jpeg"


def test_a_record_whose_file_vanished_is_404_and_the_next_upload_restores_it(app, client):
    body = png(seed=2)
    key = sha(body)
    assert put(client, key, body).status_code == 201
    store_of(app).path(key).unlink()
    r = fetch(client, key, auth("admin"))
    assert r.status_code == 404 and "file is missing" in r.json["error"]["message"]
    assert put(client, key, body).status_code == 201
    assert fetch(client, key, auth("admin")).data == body


def test_unknown_keys_are_404_json(client):
    r = fetch(client, "0" * 64, auth("admin"))
    assert r.status_code == 404 and r.json["error"]["code"] == "evidence_not_found"


# --- who may do what -----------------------------------------------------------------------------


@pytest.fixture
def people(app, client) -> dict[str, dict[str, str]]:
    """Bearer headers of every kind of caller: people of each role, the trainer, an enrolled agent."""
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    with app.app_context():
        services = hub_ext.services
        services.enrollment.accounts = RecordingAccounts()
        with services.db.session() as s:
            for role in (Role.VIEWER, Role.REVIEWER, Role.OPERATOR, Role.ADMIN):
                t = create_token(s, name=f"{role.value}-person", role=role, actor="test", now=utcnow())
                headers[role.value] = bearer(t.value)
            s.commit()
    headers["trainer"] = auth("trainer")
    creds = enroll(client, issue(client)["token"], agent_id="lab1-scope1").json
    headers["agent"] = bearer(creds["api_token"])
    return headers


def test_roles_matrix(app, client, people):
    body = png(seed=3)
    key = sha(body)
    expected_get = {
        "anonymous": 401,
        "viewer": 403,
        "reviewer": 200,
        "operator": 200,
        "admin": 200,
        "trainer": 403,
        "agent": 403,
    }
    expected_put = {"anonymous": 401, "viewer": 403, "reviewer": 403, "operator": 403, "trainer": 403}
    for who, status in expected_put.items():
        r = client.put(URL.format(key), data=body, headers={**people[who], "X-Evidence-Kind": "original"})
        assert r.status_code == status, (who, r.json)
        assert r.json["error"]["code"] in ("unauthorized", "forbidden")
    r = client.put(URL.format(key), data=body, headers={**people["agent"], "X-Evidence-Kind": "original"})
    assert r.status_code == 201 and r.json["agent_id"] == "lab1-scope1"  # the enrolled agent's own id
    for who, status in expected_get.items():
        r = fetch(client, key, people[who])
        assert r.status_code == status, who
        if status == 200:
            assert r.data == body
        else:
            assert r.json["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")


def test_signed_in_reviewers_see_images_and_viewers_do_not(app, client):
    body = png(seed=4)
    assert put(client, sha(body), body).status_code == 201
    reviewer = app.test_client()
    login_as(app, reviewer, "reviewer")
    assert fetch(reviewer, sha(body)).data == body
    viewer = app.test_client()
    login_as(app, viewer, "viewer")
    assert fetch(viewer, sha(body)).status_code == 403
    # a session never counts for writes (no CSRF on the API): a reviewer's browser cannot upload
    assert (
        reviewer.put(URL.format(sha(body)), data=body, headers={"X-Evidence-Kind": "original"}).status_code
        == 401
    )


# --- refusals ------------------------------------------------------------------------------------


def test_wrong_digests_are_400_naming_the_problem(app, client):
    body = png(seed=5)
    r = put(client, sha(b"other bytes"), body)
    assert r.status_code == 400 and r.json["error"]["code"] == "digest_mismatch"
    assert (
        sha(body) in r.json["error"]["message"]
        and "must be the bytes the agent classified" in r.json["error"]["message"]
    )
    preview = jpeg()
    r = put(client, sha(b"key"), preview, kind="preview", digest=sha(b"not the preview"))
    assert r.status_code == 400 and r.json["error"]["code"] == "digest_mismatch"
    r = put(client, sha(b"key"), preview, kind="preview")
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_digest"
    r = put(client, sha(body), body, digest="not-hex")
    assert r.status_code == 400 and "X-Content-SHA256 must be a sha256" in r.json["error"]["message"]
    r = client.put(  # what the agent's probe sends: Content-Length 0
        URL.format(sha(body)),
        headers={**auth("agent"), "X-Evidence-Kind": "original"},
        environ_overrides={"CONTENT_LENGTH": "0"},
    )
    assert r.status_code == 400 and r.json["error"]["code"] == "empty_body"
    r = put(client, sha(body), body, kind="thumbnail")
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_kind"
    r = put(client, "ABC", body)
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_parameter"
    r = fetch(client, "Z" * 64, auth("admin"))
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_parameter"
    refused = store_of(app).refused
    assert refused["digest_mismatch"] == 2 and refused["missing_digest"] == 1 and refused["invalid_kind"] == 1
    assert refused["empty_body"] == 1
    with hub_ext.for_app(app).db.session() as s:
        assert list(s.scalars(select(EvidenceImage))) == []
    assert not any(store_of(app).directory.glob("tmp/*")), "a refused upload left a temporary file"


class Exploding:
    """A request body that fails the test if the hub reads it."""

    def read(self, *args: Any) -> bytes:
        raise AssertionError("the hub read a body it should have refused by its Content-Length")

    readline = read

    def tell(self) -> int:  # the test client measures the stream; the length is overridden
        return 0

    def seek(self, *args: Any) -> int:
        return 0


def test_too_large_is_413_json_before_the_body_is_read(tmp_path, keys):
    from tests.hub.conftest import migrated_app

    app = migrated_app(hub_config(tmp_path, keys, evidence={"max_bytes": 2048}))
    try:
        client = app.test_client()
        r = client.put(
            URL.format("a" * 64),
            input_stream=Exploding(),
            headers={**auth("agent"), "X-Evidence-Kind": "original"},
            environ_overrides={"CONTENT_LENGTH": str(10 * 1024 * 1024)},
        )
        assert r.status_code == 413 and r.json["error"]["code"] == "payload_too_large"
        assert "evidence.max_bytes=2048" in r.json["error"]["message"]
        assert hub_ext.for_app(app).evidence.refused["payload_too_large"] == 1
    finally:
        from hub.app import close_app

        close_app(app)


def test_a_body_without_content_length_is_411(client):
    r = client.put(
        URL.format("a" * 64),
        input_stream=Exploding(),
        headers={**auth("agent"), "X-Evidence-Kind": "original", "Transfer-Encoding": "chunked"},
    )
    assert r.status_code == 411 and r.json["error"]["code"] == "length_required"


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_non_images_and_pixel_bombs_are_422(app, client):
    text = b"<script>alert(1)</script>"
    r = put(client, sha(text), text)
    assert r.status_code == 422 and r.json["error"]["code"] == "not_an_image"
    bomb = _png_declaring(100_000, 100_000)
    r = put(client, sha(bomb), bomb)
    assert r.status_code == 422 and r.json["error"]["code"] == "too_many_pixels"
    r = put(client, sha(b"k"), bomb, kind="preview", digest=sha(bomb))
    assert r.status_code == 422 and r.json["error"]["code"] == "too_many_pixels"
    truncated = jpeg()[:-200]
    r = put(client, sha(b"k2"), truncated, kind="preview", digest=sha(truncated))
    assert r.status_code == 422 and r.json["error"]["code"] == "not_an_image"
    tiff_preview = b"II*\x00" + b"\0" * 64
    r = put(client, sha(b"k3"), tiff_preview, kind="preview", digest=sha(tiff_preview))
    assert r.status_code == 422 and "JPEG or PNG" in r.json["error"]["message"]


@given(
    body=st.binary(min_size=1, max_size=3000)
    | st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"BM"]).flatmap(
        lambda magic: st.binary(max_size=2000).map(lambda rest: magic + rest)
    ),
    kind=st.sampled_from(["original", "preview", "", "Original", "x" * 300]),
    digest_mode=st.sampled_from(["right", "wrong", "none", "garbage"]),
    key_mode=st.sampled_from(["body", "other"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_hostile_bodies_are_refused_with_a_4xx_never_a_500(app, body, kind, digest_mode, key_mode):
    client = app.test_client()
    key = sha(body) if key_mode == "body" else sha(body + b"!")
    digest = {"right": sha(body), "wrong": sha(b"?"), "none": None, "garbage": "zz\x7f"}[digest_mode]
    r = put(client, key, body, kind=kind, digest=digest)
    assert r.status_code in (200, 201, 400, 422), (r.status_code, r.data[:300])
    assert r.is_json and ("error" in r.json) == (r.status_code >= 400)


# --- the document --------------------------------------------------------------------------------


def test_the_routes_are_documented_with_their_roles(client):
    doc = client.get(DOC).json
    put_op = doc["paths"]["/api/v1/evidence/{key}"]["put"]
    get_op = doc["paths"]["/api/v1/evidence/{key}"]["get"]
    assert put_op["x-roles"] == ["admin", "agent"]
    assert get_op["x-roles"] == ["admin", "reviewer", "operator"]
    assert {"400", "401", "403", "411", "413", "422"} <= set(put_op["responses"])
    assert "image/*" in get_op["responses"]["200"]["content"]
    param = get_op["parameters"][0]
    assert param["name"] == "key" and param["schema"]["pattern"] == "^[0-9a-f]{64}$"


def test_answers_conform_to_the_document(app, client):
    body = png(seed=6)
    put_answer = put(client, sha(body), body)
    assert put_answer.status_code == 201
    schema = schemathesis.openapi.from_wsgi(DOC, closing(app))
    get_case = schema.find_operation_by_id("get_evidence").Case(path_parameters={"key": sha(body)})
    response = get_case.call_and_validate(headers=auth("admin"), checks=CHECKS)
    assert response.status_code == 200 and response.content == body
    missing = schema.find_operation_by_id("get_evidence").Case(path_parameters={"key": "1" * 64})
    assert missing.call_and_validate(headers=auth("admin"), checks=CHECKS).status_code == 404
    again = schema.find_operation_by_id("put_evidence").Case(path_parameters={"key": sha(body)})
    answer = again.call_and_validate(headers={**auth("admin"), "X-Evidence-Kind": "original"}, checks=CHECKS)
    assert answer.status_code in (200, 411)  # without a body schemathesis may send no Content-Length
    if answer.status_code == 200:
        assert answer.json()["created"] is False


# --- config and retention ------------------------------------------------------------------------


def test_config_defaults_and_folder(tmp_path):
    config = HubConfig.load(None, data_dir=str(tmp_path))
    assert config.evidence_dir == tmp_path / "evidence"
    assert config.evidence.max_bytes == 32 * 1024 * 1024 and config.retention.evidence_days is None
    other = HubConfig.load(None, evidence={"dir": str(tmp_path / "img")}, retention={"evidence_days": 90})
    assert other.evidence_dir == tmp_path / "img" and other.retention.evidence_days == 90


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def _stored(app, client, n: int, first_seed: int) -> list[str]:
    keys = []
    for i in range(n):
        body = png(seed=first_seed + i)
        assert put(client, sha(body), body).status_code == 201
        keys.append(sha(body))
    return keys


def _age(app, keys: list[str], when: datetime) -> None:
    with hub_ext.for_app(app).db.transaction() as s:
        for row in s.scalars(select(EvidenceImage).where(EvidenceImage.sha256.in_(keys))):
            row.stored_at = when


def test_retention_deletes_expired_evidence_and_its_files_audited(app, client):
    store = store_of(app)
    db = hub_ext.for_app(app).db
    old = _stored(app, client, 5, 100)
    young = _stored(app, client, 3, 200)
    _age(app, old, NOW - timedelta(days=31))
    _age(app, young, NOW - timedelta(days=29))
    section = RetentionSection(evidence_days=30, batch_size=100)
    dry = Retention(db, section, clock=lambda: NOW, evidence_store=store).run(dry_run=True)
    assert dry.evidence_matched == 5 and dry.evidence_deleted == 0 and store.path(old[0]).exists()
    report = Retention(db, section, clock=lambda: NOW, evidence_store=store, trigger="test").run()
    assert report.evidence_deleted == 5 and report.evidence_cutoff == NOW - timedelta(days=30)
    assert report.deleted == 0  # results_days unset: no result touched
    assert not any(store.path(k).exists() for k in old)
    assert all(store.path(k).exists() for k in young)
    for key in old:
        assert fetch(client, key, auth("admin")).status_code == 404
    with db.session() as s:
        entries = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "evidence.delete")))
    assert len(entries) == 1 and entries[0].actor == "retention"
    assert entries[0].details["deleted"] == 5 and entries[0].details["trigger"] == "test"


def test_retention_batches_and_keeps_a_file_uploaded_again_meanwhile(app, client):
    store = store_of(app)
    db = hub_ext.for_app(app).db
    old = _stored(app, client, 5, 300)
    _age(app, old, NOW - timedelta(days=400))
    future = time.time() + 60  # as if written after the batch began: a new upload of the same image
    os.utime(store.path(old[0]), (future, future))
    report = Retention(
        db, RetentionSection(evidence_days=30, batch_size=100), clock=lambda: NOW, evidence_store=store
    ).run()
    assert report.evidence_deleted == 5
    assert store.path(old[0]).exists() and not store.path(old[1]).exists()


def test_the_sweep_removes_orphan_files_past_the_grace_period(app, client):
    store = store_of(app)
    kept = _stored(app, client, 1, 400)[0]
    orphan_old = store.path("e" * 64)
    orphan_new = store.path("f" * 64)
    stale_tmp = store.directory / "tmp" / f"{'d' * 64}.1.2.part"
    for path in (orphan_old, orphan_new, stale_tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind")
    past = time.time() - 7200
    for path in (orphan_old, stale_tmp):
        os.utime(path, (past, past))
    (store.directory / "ee" / "README").write_text("not an image name: ignored")
    assert store.sweep() == 2
    assert not orphan_old.exists() and not stale_tmp.exists()
    assert orphan_new.exists() and store.path(kept).exists()
    # every run given the store sweeps, also a results-only one
    os.utime(orphan_new, (past, past))
    db = hub_ext.for_app(app).db
    section = RetentionSection(results_days=30, archive_dir=Path(store.directory.parent / "archive"))
    assert Retention(db, section, evidence_store=store).run().orphans_removed == 1


def test_evidence_days_without_a_store_is_refused(app):
    db = hub_ext.for_app(app).db
    with pytest.raises(RetentionError, match="no evidence store"):
        Retention(db, RetentionSection(evidence_days=30)).run()
    with pytest.raises(RetentionError, match="results_days is not set, nor retention.evidence_days"):
        Retention(db, RetentionSection(), evidence_store=store_of(app)).run()
