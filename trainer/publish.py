"""Signed bundles and their upload to the hub.

:func:`make_bundle` writes the manifest for an exported model (contract in ``shared.bundle``:
artifacts ``frozen_graph``, ``ir_fp32``, ``ir_fp16``, ``reference_image``; the IR tensor specs;
``metrics["reference_probabilities"]``), signs it with the trainer's Ed25519 key and zips it.
:func:`publish` uploads a bundle to ``POST /api/v1/models`` through :class:`shared.hubclient.HubClient`
(bearer token, the hub's error envelope; a POST is never retried, so a bundle is sent once).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bundle import (
    BundleError,
    Manifest,
    TensorSpec,
    build_bundle,
    digest_files,
    generate_keypair,
    load_private_key,
)
from shared.cells.spec import CellAnalysisSpec, OodSpec
from shared.hubclient import HubClient, HubError
from shared.logs import kv
from shared.preprocessing import PreprocessingSpec
from trainer.export import IR_FP16, IR_FP32, REFERENCE_IMAGE

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "signing.pem"
PUBLIC_KEY_FILE = "signing.pub.pem"
FROZEN_GRAPH = "model.pb"
MODELS_PATH = "/models"
# What a refusal most likely means, appended to the hub's own message.
REFUSAL_HINTS = {
    401: " (check the token)",
    403: " (the token needs the trainer or admin role)",
    409: " (this name + version is already published: bump --version)",
    413: " (bundle too large for the hub's upload limit)",
}


class PublishError(RuntimeError):
    """The hub refused the bundle or could not be reached; the message carries the hub's reason."""


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    sha256: str
    manifest: Manifest


def keygen(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/signing.pem`` (private, mode 0600) and ``out_dir/signing.pub.pem``.

    Raises:
        FileExistsError: either file exists already (keys are never overwritten: agents pin the
            public key, and a lost private key cannot be recovered).
    """
    out = Path(out_dir)
    private, public = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for p in (private, public):
        if p.exists():
            raise FileExistsError(
                f"{p} exists; refusing to overwrite a signing key "
                "(agents pin the public key). Choose another --out folder."
            )
    generate_keypair(private, public)
    log.info(kv("keygen", private=private, public=public))
    return private, public


def source_commit(repo_dir: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``repo_dir`` (default: this package's checkout), or None outside git."""
    git = shutil.which("git")
    if git is None:
        return None
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(kv("source_commit_unknown", reason=exc))
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def build_manifest(
    stage_dir: str | Path,
    *,
    name: str,
    version: str,
    labels: list[str],
    image_size: int,
    metrics: dict[str, Any],
    reference_probabilities: list[float] | None,
    parity: dict[str, float],
    dataset_fingerprint: str,
    training: dict[str, Any],
    architecture: str = "inception_v3",
    reference_image: str | None = REFERENCE_IMAGE,
    commit: str | None = None,
    int8_ir: str | None = None,
    ood: OodSpec | None = None,
    cells: CellAnalysisSpec | None = None,
) -> Manifest:
    """The manifest of the model files staged in ``stage_dir`` (their sha256 are computed here).

    ``ood`` adds its statistics file (``ood.stats_file``, staged beside the IRs) and the section;
    ``cells`` makes the model a cell model (finder, decision rule, field-level metrics).

    Raises:
        BundleError: a staged file is missing, or ``name``/``version`` are invalid (the message
            names the field).
    """
    stage = Path(stage_dir)
    fp32, fp16 = IR_FP32, IR_FP16
    artifacts = {"frozen_graph": FROZEN_GRAPH, "ir_fp32": fp32, "ir_fp16": fp16}
    files = [FROZEN_GRAPH, fp32, fp32[:-4] + ".bin", fp16, fp16[:-4] + ".bin"]
    if int8_ir is not None:  # optional NNCF INT8 IR (trainer.int8), an extra beside FP32/FP16
        artifacts["ir_int8"] = int8_ir
        files += [int8_ir, int8_ir[:-4] + ".bin"]
    if ood is not None:
        files.append(ood.stats_file)
    all_metrics = dict(metrics)
    if reference_image is not None:
        if reference_probabilities is None:
            raise BundleError("a reference image needs its reference probabilities")
        artifacts["reference_image"] = reference_image
        files.append(reference_image)
        all_metrics["reference_probabilities"] = [float(p) for p in reference_probabilities]
    missing = [f for f in files if not (stage / f).is_file()]
    if missing:
        raise BundleError(f"cannot bundle {stage}: missing {missing}; run `leukonet trainer export` first")
    try:
        return Manifest(
            name=name,
            version=version,
            labels=labels,
            architecture=architecture,
            input=TensorSpec(
                name="input", shape=[1, image_size, image_size, 3], dtype="uint8", layout="NHWC"
            ),
            output=TensorSpec(name="probabilities", shape=[1, len(labels)], dtype="float32"),
            preprocessing=PreprocessingSpec(image_size=image_size),
            artifacts=artifacts,
            files=digest_files(stage, files),
            metrics=all_metrics,
            parity=parity,
            dataset_fingerprint=dataset_fingerprint,
            training=training,
            source_commit=commit,
            ood=ood,
            cells=cells,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise BundleError(f"bundle manifest for {name!r} {version!r} is invalid: {exc}") from exc


def make_bundle(
    stage_dir: str | Path, manifest: Manifest, signing_key: str | Path, out_path: str | Path
) -> BundleInfo:
    """Sign ``manifest`` with the private key at ``signing_key`` and zip the staged files.

    Raises:
        BundleError: the key cannot be loaded or a file changed since the manifest was built.
    """
    key = load_private_key(signing_key)
    digest = build_bundle(stage_dir, manifest, key, out_path)
    log.info(kv("bundled", path=out_path, sha256=digest, name=manifest.name, version=manifest.version))
    return BundleInfo(path=Path(out_path), sha256=digest, manifest=manifest)


def publish(bundle_path: str | Path, hub_url: str, token: str, timeout: float = 120.0) -> dict[str, Any]:
    """Upload a bundle (``POST {hub_url}/api/v1/models``, multipart field ``bundle``).

    Returns:
        the hub's model JSON.

    Raises:
        PublishError: no token; the hub is unreachable (``cannot reach the hub at ...``); it
            answered 4xx/5xx (``hub refused <file>: HTTP <status> <error.code>: <error.message>``,
            and :data:`REFUSAL_HINTS`: 401/403 hint at the token, 409 at the version, 413 at the
            upload limit); or it answered without JSON.
        FileNotFoundError: ``bundle_path`` does not exist.
    """
    path = Path(bundle_path)
    if not path.is_file():
        raise FileNotFoundError(f"bundle {path} does not exist; build it with `leukonet trainer run` first")
    if not token:
        raise PublishError(
            "no hub token: pass --token or set LEUKONET_TRAINER_TOKEN "
            "(a token with the trainer or admin role in the hub config)"
        )
    hub = HubClient(hub_url, token, timeout_s=timeout)
    url = hub.url(MODELS_PATH)
    try:
        with open(path, "rb") as fh:
            response = hub.request("POST", MODELS_PATH, files={"bundle": (path.name, fh, "application/zip")})
    except HubError as exc:
        if exc.status == 0:
            raise PublishError(exc.message) from exc
        hint = REFUSAL_HINTS.get(exc.status, "")
        raise PublishError(f"hub refused {path.name}: {exc.detail}{hint}") from exc
    try:
        model: dict[str, Any] = response.json()
    except ValueError as exc:
        raise PublishError(f"hub answered HTTP {response.status_code} without JSON from {url}") from exc
    log.info(
        kv(
            "published",
            url=url,
            name=model.get("name"),
            version=model.get("version"),
            sha256=model.get("sha256"),
        )
    )
    return model
