"""Model registry: upload verification (good, tampered, unsigned, foreign key, oversize, duplicate),
content-addressed storage, and bundle download with ETag, conditional GET and Range."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from hub.app import close_app, create_app
from shared.bundle import load_public_key, verify_bundle
from tests.hub.conftest import auth, hub_config, make_keys, migrated_app, upload_bundle


def rewrite(path: Path, name: str, data: bytes | None) -> None:
    with zipfile.ZipFile(path) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    if data is None:
        items.pop(name)
    else:
        items[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in items.items():
            zf.writestr(n, d)


def test_good_upload_is_stored_content_addressed(client, make_bundle, config, keys):
    path = make_bundle()
    r = upload_bundle(client, path)
    assert r.status_code == 201, r.json
    body = r.json
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (body["name"], body["version"], body["sha256"]) == ("leuko", "1.0.0", digest)
    assert body["labels"] == ["ALL", "normal"] and body["metrics"] == {"accuracy": 0.9}
    assert body["size_bytes"] == path.stat().st_size and body["uploaded_by"] == "t-trainer"
    stored = config.data_dir / "bundles" / digest[:2] / f"{digest}.zip"
    assert stored.read_bytes() == path.read_bytes()
    assert not any((config.data_dir / "bundles" / ".incoming").iterdir())
    listed = client.get("/api/v1/models", headers=auth("agent")).json["items"]
    assert [(m["name"], m["version"]) for m in listed] == [("leuko", "1.0.0")]
    shown = client.get("/api/v1/models/leuko/1.0.0", headers=auth("agent")).json
    for key in ("name", "version", "sha256", "labels", "metrics", "parity", "created_at", "size_bytes"):
        assert key in shown
    # what the agent downloads verifies with the trainer key
    out = path.parent / "downloaded.zip"
    with client.get("/api/v1/models/leuko/1.0.0/bundle", headers=auth("agent")) as dl:
        out.write_bytes(dl.data)
    assert verify_bundle(out, load_public_key(keys.public), expected_sha256=digest).name == "leuko"


def test_duplicate_name_version_is_409(client, make_bundle):
    assert upload_bundle(client, make_bundle()).status_code == 201
    r = upload_bundle(client, make_bundle(pb_bytes=3000))  # same name + version, different bytes
    assert r.status_code == 409 and r.json["error"]["code"] == "model_exists"
    assert upload_bundle(client, make_bundle(version="1.0.1")).status_code == 201


def test_tampered_file_is_rejected(client, make_bundle, config):
    path = make_bundle()
    rewrite(path, "model.pb", b"evil weights")
    r = upload_bundle(client, path)
    assert r.status_code == 422 and r.json["error"]["code"] == "bundle_rejected"
    assert "model.pb" in r.json["error"]["message"]
    assert client.get("/api/v1/models", headers=auth("admin")).json["items"] == []
    assert not list((config.data_dir / "bundles").glob("??/*.zip"))


def test_edited_manifest_fails_signature(client, make_bundle):
    path = make_bundle()
    with zipfile.ZipFile(path) as zf:
        text = zf.read("manifest.json").decode()
    rewrite(path, "manifest.json", text.replace('"1.0.0"', '"6.6.6"').encode())
    r = upload_bundle(client, path)
    assert r.status_code == 422 and r.json["error"]["code"] == "bad_signature"


def test_unsigned_bundle_is_rejected(client, make_bundle):
    path = make_bundle()
    rewrite(path, "manifest.sig", None)
    r = upload_bundle(client, path)
    assert r.status_code == 422 and r.json["error"]["code"] == "unsigned_bundle"


def test_bundle_signed_by_unknown_key_is_rejected(client, make_bundle, tmp_path):
    stranger = make_keys(tmp_path / "stranger")
    r = upload_bundle(client, make_bundle(signed_by=stranger))
    assert r.status_code == 422 and r.json["error"]["code"] == "bad_signature"


def test_any_trusted_key_may_sign(tmp_path, keys, make_bundle):
    second = make_keys(tmp_path / "second")
    cfg = hub_config(tmp_path, keys, trusted_keys=[str(keys.public), str(second.public)])

    app = migrated_app(cfg)
    try:
        assert upload_bundle(app.test_client(), make_bundle(signed_by=second)).status_code == 201
    finally:
        close_app(app)


@pytest.mark.parametrize(
    ("payload", "code"), [(b"not a zip at all", "invalid_bundle"), (b"", "invalid_bundle")]
)
def test_not_a_bundle_is_400(client, tmp_path, payload, code):
    p = tmp_path / "junk.zip"
    p.write_bytes(payload)
    r = upload_bundle(client, p)
    assert r.status_code == 400 and r.json["error"]["code"] == code


def test_zip_without_manifest_is_400(client, tmp_path):
    p = tmp_path / "plain.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("model.pb", b"x")
    r = upload_bundle(client, p)
    assert r.status_code == 400 and "manifest.json" in r.json["error"]["message"]


def test_missing_form_field_is_400(client):
    r = client.post(
        "/api/v1/models",
        data={"other": (io.BytesIO(b"x"), "x.zip")},
        headers=auth("admin"),
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_bundle"


def test_oversize_upload_is_413_json(tmp_path, keys, make_bundle):
    cfg = hub_config(tmp_path, keys, max_upload_mb=1)

    app = migrated_app(cfg)
    try:
        big = make_bundle(pb_bytes=3 * 1024 * 1024)
        assert big.stat().st_size > 1024 * 1024
        # a hand-built multipart body: the test client would spool a >500 KB file field to a temp
        # file it never closes when the app refuses the body unread
        boundary = "leukonet-test-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="big.zip"\r\n'
                f"Content-Type: application/zip\r\n\r\n"
            ).encode()
            + big.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        r = app.test_client().post(
            "/api/v1/models",
            data=body,
            headers=auth("trainer"),
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        assert r.status_code == 413
        assert r.json["error"]["code"] == "payload_too_large"
        assert "max_upload_mb" in r.json["error"]["message"]
    finally:
        close_app(app)


def test_uploads_refused_without_trusted_keys(tmp_path, make_bundle):
    cfg = hub_config(tmp_path, None)

    app = migrated_app(cfg)
    try:
        r = upload_bundle(app.test_client(), make_bundle())
        assert r.status_code == 503 and "trusted_keys" in r.json["error"]["message"]
    finally:
        close_app(app)


def test_download_etag_conditional_and_range(client, make_bundle):
    path = make_bundle()
    digest = upload_bundle(client, path).json["sha256"]
    url = "/api/v1/models/leuko/1.0.0/bundle"
    with client.get(url, headers=auth("agent")) as r:
        assert r.status_code == 200
        assert r.data == path.read_bytes()
        assert r.headers["ETag"] == f'"{digest}"'
        assert r.headers["Content-Type"] == "application/zip"
        assert r.headers["Accept-Ranges"] == "bytes"
    with client.get(url, headers={**auth("agent"), "If-None-Match": f'"{digest}"'}) as r:
        assert r.status_code == 304
    with client.get(url, headers={**auth("agent"), "Range": "bytes=10-99"}) as part:
        assert part.status_code == 206
        assert part.data == path.read_bytes()[10:100]
        assert part.headers["Content-Range"] == f"bytes 10-99/{path.stat().st_size}"
    missing = client.get("/api/v1/models/leuko/9.9.9/bundle", headers=auth("admin"))
    assert missing.status_code == 404 and missing.json["error"]["code"] == "model_not_found"


def test_bad_trusted_key_path_fails_app_creation(tmp_path, keys):
    from shared.config import ConfigError

    cfg = hub_config(tmp_path, keys, trusted_keys=[str(tmp_path / "missing.pem")])
    with pytest.raises(ConfigError, match="missing.pem"):
        create_app(cfg)


def test_registry_stream_limit_is_enforced_without_http(app, make_bundle, config):
    """The store-side limit holds even when a front proxy does not enforce MAX_CONTENT_LENGTH."""
    from hub.extensions import hub_ext
    from hub.registry import RegistryError

    registry = hub_ext.for_app(app).registry
    path = make_bundle(pb_bytes=200_000)
    registry.max_bytes = 100_000
    with path.open("rb") as fh, pytest.raises(RegistryError) as err:
        registry.upload(fh, uploaded_by="test")
    assert err.value.status == 413
    assert not any((config.data_dir / "bundles" / ".incoming").iterdir())


def test_corrupt_and_bomb_uploads_answer_422_and_store_nothing(client, make_bundle, config, tmp_path):
    path = make_bundle(pb_bytes=40_000)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.pb")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 10] ^= 0xFF  # bad CRC
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data))
    r = upload_bundle(client, corrupt)
    assert r.status_code == 422 and r.json["error"]["code"] == "bundle_rejected", r.json
    bomb = make_bundle(version="2.0.0")
    with zipfile.ZipFile(bomb) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in items.items():
            zf.writestr(n, bytes(32 * 1024 * 1024) if n == "model.pb" else d)  # 32 MiB of zeros: ~1000:1
    r = upload_bundle(client, bomb)
    assert r.status_code == 422 and r.json["error"]["code"] == "bundle_rejected"
    assert "zip bomb" in r.json["error"]["message"]
    assert client.get("/api/v1/models", headers=auth("admin")).json["items"] == []
    assert not list((config.data_dir / "bundles").glob("??/*.zip"))


def test_the_bundle_caps_come_from_the_hub_config(tmp_path, keys, make_bundle):
    cfg = hub_config(tmp_path, keys, bundles={"max_manifest_kb": 1})
    app = migrated_app(cfg)
    try:
        r = upload_bundle(app.test_client(), make_bundle())
        assert r.status_code == 422 and "over the 1024-byte limit" in r.json["error"]["message"]
    finally:
        close_app(app)
