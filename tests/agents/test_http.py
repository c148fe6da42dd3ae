"""The HTTP source: /classify (raw + multipart), the seed's /Inference shape, and 4xx/5xx JSON errors."""

import http.client
import json
import threading

import cv2
import pytest
import requests

from agents.config import AgentConfig
from agents.daemon import build_agent
from tests.agents.helpers import BLUE, RED, image, make_bundle, make_keys, wait_until
from tests.shared.test_hostile_input import png_declaring

TOKEN = "scope-token"


def png(color, seed=0) -> bytes:
    ok, buf = cv2.imencode(".png", image(color, seed=seed))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def keys_and_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("http")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0")[0]


def start_agent(tmp_path, keys, bundle, **http):
    cfg = AgentConfig.load(
        None,
        agent_id="http-1",
        watch_dir=tmp_path / "in",
        state_dir=tmp_path / "state",
        backend="fake",
        model_public_key=keys.public,
        initial_model=bundle,
        low_confidence_threshold=0.99,
        http={"enabled": True, "port": 0, "token": TOKEN, "max_upload_mb": 0.05} | http,
    )
    agent = build_agent(cfg, connect=False)
    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, ready.set), daemon=True)
    thread.start()
    assert ready.wait(30)
    return agent, f"http://127.0.0.1:{agent.sources['http'].port}", stop, thread


@pytest.fixture
def served(tmp_path, keys_and_bundle):
    keys, bundle = keys_and_bundle
    agent, url, stop, thread = start_agent(tmp_path, keys, bundle)
    yield agent, url
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_classify_raw_and_multipart_results_go_to_the_outbox(served):
    agent, url = served
    raw = requests.post(f"{url}/classify?name=../../etc/scan1.png", data=png(BLUE), headers=AUTH, timeout=10)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert (body["label"], body["image_name"], body["agent_id"]) == ("ALL", "scan1.png", "http-1")
    assert body["probabilities"]["ALL"] == body["confidence"]
    multi = requests.post(
        f"{url}/classify", files={"image": ("scan2.png", png(RED), "image/png")}, headers=AUTH, timeout=10
    )
    assert multi.status_code == 200, multi.text
    assert (multi.json()["label"], multi.json()["image_name"]) == ("normal", "scan2.png")
    stored = {json.loads(r.payload)["result_id"] for r in agent.outbox.after(0, 10)}
    assert stored == {body["result_id"], multi.json()["result_id"]}


def test_seed_inference_endpoint_answers_the_old_shape(served):
    _, url = served
    resp = requests.post(f"{url}/Inference", data=png(BLUE), headers=AUTH, timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["Response"] == "OK" and body["Message"].startswith("ALL (confidence")
    assert body["Results"]["label"] == "ALL" and body["Results"]["model_version"] == "1.0.0"
    assert set(body["Results"]) == {
        "label",
        "confidence",
        "low_confidence",
        "probabilities",
        "result_id",
        "model_name",
        "model_version",
    }
    bad = requests.post(f"{url}/Inference", data=b"not an image", headers=AUTH, timeout=10)
    assert bad.status_code == 422
    assert bad.json()["Response"] == "FAILED" and "not a decodable image" in bad.json()["Message"]
    assert bad.json()["Results"] is None


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"\x89PNG\r\n\x1a\ngarbage"}, 422, "bad_image"),
        ({"data": b""}, 400, "empty_body"),
        ({"data": b"x" * 60_000}, 413, "too_large"),
        ({"files": {"other": ("", b"x")}}, 400, "no_image"),
        ({"data": png(BLUE), "headers": {}}, 401, "unauthorized"),
        ({"data": png(BLUE), "headers": {"Authorization": "Bearer wrong"}}, 401, "unauthorized"),
    ],
)
def test_classify_errors_are_json(served, kwargs, status, code):
    _, url = served
    kwargs = {"headers": AUTH} | kwargs
    resp = requests.post(f"{url}/classify", timeout=10, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    err = resp.json()["error"]
    assert err["code"] == code and err["message"]


def test_unknown_paths_methods_and_missing_length(served):
    agent, url = served
    assert (
        requests.post(f"{url}/nope", data=b"x", headers=AUTH, timeout=10).json()["error"]["code"]
        == "not_found"
    )
    assert requests.get(f"{url}/classify", timeout=10).status_code == 405
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["model"]["version"] == "1.0.0" and health["intake"] == "open"
    conn = http.client.HTTPConnection("127.0.0.1", agent.sources["http"].port, timeout=10)
    conn.putrequest("POST", "/classify")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["error"]["code"] == "length_required"
    conn.close()


def test_no_model_is_503_json(tmp_path, keys_and_bundle):
    keys, _ = keys_and_bundle
    agent, url, stop, thread = start_agent(tmp_path, keys, None, token=None)
    try:
        resp = requests.post(f"{url}/classify", data=png(BLUE), timeout=10)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_model"
        assert resp.headers["Retry-After"]
        assert wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).json()["model"] is None)
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (png_declaring(60_000, 60_000), "too many pixels"),
        (png_declaring(12_000, 9_000), "over the limit of 100000000"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9", "not a decodable image"),
    ],
)
def test_pixel_bombs_and_broken_images_are_422_json(served, data, match):
    agent, url = served
    resp = requests.post(f"{url}/classify", data=data, headers=AUTH, timeout=10)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "bad_image"
    assert match in resp.json()["error"]["message"]
    ok = requests.post(f"{url}/classify", data=png(BLUE), headers=AUTH, timeout=10)
    assert ok.status_code == 200  # and the next image is classified


def test_an_unexpected_error_in_a_request_is_500_json_and_the_server_goes_on(served, monkeypatch):
    agent, url = served
    calls = []

    def broken(name, data):
        calls.append(name)
        raise RuntimeError("a bug in classify")

    monkeypatch.setattr(agent.sources["http"], "classify", broken)
    resp = requests.post(f"{url}/classify", data=png(BLUE), headers=AUTH, timeout=10)
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "internal_error"
    assert agent.sources["http"].errors == 1 and calls
    monkeypatch.undo()
    assert requests.post(f"{url}/classify", data=png(BLUE), headers=AUTH, timeout=10).status_code == 200
