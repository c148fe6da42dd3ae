"""Row -> JSON shapes of the API (one function per resource, used by API and dashboard)."""

from __future__ import annotations

from typing import Any

from hub.db.models import Agent, Classification, ModelVersion, ResultCell, TrainingJob
from hub.db.types import iso
from hub.twin import bundle_url


def model_json(row: ModelVersion, public_url: str) -> dict[str, Any]:
    m = row.manifest
    return {
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "labels": m.get("labels", []),
        "metrics": m.get("metrics", {}),
        "parity": m.get("parity", {}),
        "architecture": m.get("architecture"),
        "input": m.get("input"),
        "output": m.get("output"),
        "preprocessing": m.get("preprocessing"),
        "artifacts": m.get("artifacts", {}),
        "cells": m.get("cells"),
        "ood": m.get("ood"),
        "dataset_fingerprint": m.get("dataset_fingerprint", ""),
        "built_at": m.get("created_at"),
        "created_at": iso(row.created_at),
        "uploaded_by": row.uploaded_by,
        "bundle_url": bundle_url(public_url, row.name, row.version),
    }


def agent_json(a: Agent, tags: list[str] | None = None) -> dict[str, Any]:
    return {
        "agent_id": a.agent_id,
        "lab": a.lab,
        "state": a.state,
        "model_name": a.model_name,
        "model_version": a.model_version,
        "desired_model_name": a.desired_model_name,
        "desired_model_version": a.desired_model_version,
        "desired_set_at": iso(a.desired_set_at),
        "device": a.device,
        "precision": a.precision,
        "execution_precision": a.execution_precision,
        "last_seen": iso(a.last_seen),
        "vitals": a.vitals or {},
        "tags": tags or [],
        "enrolled_at": iso(a.enrolled_at),
        "revoked_at": iso(a.revoked_at),
    }


def classification_json(c: Classification) -> dict[str, Any]:
    return {
        "result_id": str(c.result_id),
        "agent_id": c.agent_id,
        "lab": c.lab,
        "image_name": c.image_name,
        "image_sha256": c.image_sha256,
        "label": c.label,
        "confidence": c.confidence,
        "probabilities": c.probabilities,
        "low_confidence": c.low_confidence,
        "model_name": c.model_name,
        "model_version": c.model_version,
        "device": c.device,
        "precision": c.precision,
        "execution_precision": c.execution_precision,
        "timings": c.timings,
        "captured_at": iso(c.captured_at),
        "received_at": iso(c.received_at),
        "input_kind": c.input_kind,
        "unfamiliar": c.unfamiliar,
        "ood_score": c.ood_score,
        "specimen_id": c.specimen_id,
        "decision_rule": c.decision_rule,
        "cell_counts": c.cell_counts,
    }


def cell_json(cell: ResultCell) -> dict[str, Any]:
    return {
        "index": cell.cell_index,
        "box": [cell.x, cell.y, cell.width, cell.height],
        "label": cell.label,
        "confidence": cell.confidence,
        "probabilities": cell.probabilities,
        "unfamiliar": cell.unfamiliar,
        "ood_score": cell.ood_score,
    }


def classification_detail_json(c: Classification, cells: list[ResultCell]) -> dict[str, Any]:
    """:func:`classification_json` with the result's ``cells`` (a field's; empty for a single cell)."""
    return {**classification_json(c), "cells": [cell_json(cell) for cell in cells]}


def training_job_json(j: TrainingJob) -> dict[str, Any]:
    return {
        "job_id": j.job_id,
        "state": j.state,
        "spec": j.spec,
        "progress": j.progress,
        "error": j.error,
        "result": j.result,
        "worker": j.worker,
        "cancel_requested": j.cancel_requested,
        "created_by": j.created_by,
        "created_at": iso(j.created_at),
        "started_at": iso(j.started_at),
        "finished_at": iso(j.finished_at),
        "heartbeat_at": iso(j.heartbeat_at),
    }
