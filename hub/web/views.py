"""Dashboard views of the fleet. Pages need a session from ``/login`` (:mod:`hub.web.login`);
pages refresh themselves via the API with the session, which reads with the person's own role.

Pages: fleet (``/``: agents and the latest results, each linked to its result page,
:mod:`hub.web.results`), models with metrics side by side, their cell analysis and unfamiliar flag,
and a compare view (``/models``), rollouts (``/rollouts``, ``/rollouts/<id>`` with groups, progress,
failures and reasons, and pause / resume / abort / rollback buttons), training jobs (``/training``:
the queue with progress, a form to queue a job and cancel buttons), and one agent with its model
history (``/agents/<id>``). Every signed-in role reads them all; rollout and training actions are
for operators and admins only (the buttons and forms are not shown to others, and a POST from them
is answered 403). Actions are form POSTs protected by a per-session CSRF token; the audit log
records them with the person's user name as the actor. All user data reaches the HTML through Jinja
autoescaping (templates) or ``textContent`` (JS).
"""

from __future__ import annotations

import json
from typing import Any, get_args

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from pydantic import ValidationError
from sqlalchemy import select
from werkzeug.wrappers import Response

from hub import audit
from hub.api.models import compare_rows
from hub.api.rollouts import validation_message
from hub.api.serialize import agent_json, classification_json, iso, model_json, training_job_json
from hub.api.tags import agent_tags, lab_tags
from hub.db.models import Agent, Classification, ModelEventRecord, Rollout, RolloutHistory
from hub.extensions import hub_ext
from hub.mqtt.publisher import BrokerUnavailable
from hub.registry.service import RegistryError
from hub.rollouts.engine import RolloutError
from hub.rollouts.report import audit_json, history_json, rollout_json
from hub.training.report import progress_text
from hub.training.rows import TrainingError
from hub.web.guards import actor, check_csrf, login_required, operator_required
from hub.web.guards import csrf_token as csrf_token  # re-exported: forms elsewhere use it from here
from hub.web.model_sections import model_sections
from shared.training import TrainingJobSpec

bp = Blueprint(
    "web", __name__, template_folder="../templates", static_folder="../static", static_url_path="/static"
)
LATEST = 50
ROLLOUT_ACTIONS = ("pause", "resume", "abort", "rollback")
HISTORY_ROWS = 200
TRAINING_ROWS = 100
# the queue form's fields, in order; the rest of TrainingJobSpec keeps its defaults
TRAINING_FORM = (
    "name",
    "version",
    "dataset",
    "mode",
    "checkpoint",
    "steps",
    "batch_size",
    "learning_rate",
    "image_size",
    "depth_multiplier",
    "seed",
    "int8",
)


@bp.get("/")
@login_required
def index() -> str:
    with hub_ext.services.db.session() as s:
        agents = [agent_json(a) for a in s.scalars(select(Agent).order_by(Agent.agent_id))]
        results = [
            classification_json(c)
            for c in s.scalars(
                select(Classification)
                .order_by(Classification.captured_at.desc(), Classification.id.desc())
                .limit(LATEST)
            )
        ]
    return render_template("index.html", agents=agents, results=results, latest=LATEST)


@bp.app_template_filter("fmt")
def fmt(value: Any) -> str:
    """Compact display of a metric value: floats to 4 significant digits, lists and dicts as JSON."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


@bp.get("/models")
@login_required
def models_page() -> str:
    """Every version with its metrics and parity side by side, and the cell analysis and unfamiliar
    flag of those that have them; ``?a=&b=`` (NAME/VERSION) compares two."""
    services = hub_ext.services
    models = [model_json(m, services.config.public_url) for m in services.registry.list()]
    for m in models:
        m["sections"] = model_sections(m)
    metric_keys = sorted({k for m in models for k, v in m["metrics"].items() if _scalar(v)})
    parity_keys = sorted({k for m in models for k, v in m["parity"].items() if _scalar(v)})
    comparison = None
    a, b = request.args.get("a"), request.args.get("b")
    if a and b:
        try:
            left = model_json(services.registry.get(*_split_ref(a)), services.config.public_url)
            right = model_json(services.registry.get(*_split_ref(b)), services.config.public_url)
        except RegistryError as exc:
            flash(exc.message)
        else:
            comparison = {"a": left, "b": right, "rows": compare_rows(left, right)}
    return render_template(
        "models.html",
        models=models,
        metric_keys=metric_keys,
        parity_keys=parity_keys,
        comparison=comparison,
        a=a or "",
        b=b or "",
    )


def _split_ref(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition("/")
    return name, version


@bp.app_template_filter("job_progress")
def job_progress(progress: dict[str, Any] | None) -> str:
    """A training job's progress, e.g. ``train 40% (120/300) · ETA 3 min``."""
    return progress_text(progress)


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


@bp.get("/rollouts")
@login_required
def rollouts_page() -> str:
    with hub_ext.services.db.session() as s:
        rollouts = [rollout_json(s, r) for r in s.scalars(select(Rollout).order_by(Rollout.id.desc()))]
    return render_template("rollouts.html", rollouts=rollouts)


@bp.get("/rollouts/<rollout_id>")
@login_required
def rollout_page(rollout_id: str) -> str:
    with hub_ext.services.db.session() as s:
        row = s.scalar(select(Rollout).where(Rollout.rollout_id == rollout_id))
        if row is None:
            abort(404)
        rollout = rollout_json(s, row, with_targets=True)
        history = [
            history_json(h)
            for h in s.scalars(
                select(RolloutHistory)
                .where(RolloutHistory.rollout_id == rollout_id, RolloutHistory.agent_id.is_(None))
                .order_by(RolloutHistory.id)
            )
        ]
        entries = [audit_json(a) for a in audit.recent(s, HISTORY_ROWS, f"rollout/{rollout_id}")]
    return render_template("rollout.html", r=rollout, history=history, audit=entries, actions=ROLLOUT_ACTIONS)


@bp.post("/rollouts/<rollout_id>/<action>")
@operator_required
def rollout_action(rollout_id: str, action: str) -> Response:
    """Pause / resume / abort / rollback (operators, admins; actor: the person), CSRF-checked."""
    if action not in ROLLOUT_ACTIONS:
        abort(404)
    check_csrf()
    engine = hub_ext.services.rollouts
    try:
        getattr(engine, action)(rollout_id, actor(), request.form.get("reason", "")[:1024])
        flash(f"{action}: done")
    except RolloutError as exc:
        flash(f"{action} refused: {exc.message}")
    except BrokerUnavailable as exc:
        flash(f"{action} failed: {exc}; nothing was changed, retry when the broker is up")
    return redirect(url_for("web.rollout_page", rollout_id=rollout_id))


@bp.get("/agents/<agent_id>")
@login_required
def agent_page(agent_id: str) -> str:
    with hub_ext.services.db.session() as s:
        row = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
        if row is None:
            abort(404)
        agent = agent_json(row, tags=agent_tags(s, [agent_id]).get(agent_id, []))
        agent["lab_tags"] = lab_tags(s).get(row.lab, [])
        events = [
            {
                "event": e.event,
                "model": f"{e.model_name} {e.model_version}",
                "rollout_id": e.rollout_id,
                "detail": e.detail,
                "sent_at": iso(e.sent_at),
            }
            for e in s.scalars(
                select(ModelEventRecord)
                .where(ModelEventRecord.agent_id == agent_id)
                .order_by(ModelEventRecord.sent_at.desc(), ModelEventRecord.id.desc())
                .limit(HISTORY_ROWS)
            )
        ]
        rollouts = [
            history_json(h)
            for h in s.scalars(
                select(RolloutHistory)
                .where(RolloutHistory.agent_id == agent_id)
                .order_by(RolloutHistory.id.desc())
                .limit(HISTORY_ROWS)
            )
        ]
    return render_template("agent.html", a=agent, events=events, rollouts=rollouts)


@bp.get("/training")
@login_required
def training_page() -> str:
    return _training_page({})


def _training_page(form: dict[str, str]) -> str:
    jobs = [training_job_json(j) for j in hub_ext.services.training.list_jobs(limit=TRAINING_ROWS)]
    fields = TrainingJobSpec.model_fields
    return render_template(
        "training.html",
        jobs=jobs,
        form=form,
        fields={k: fields[k] for k in TRAINING_FORM},
        modes=get_args(fields["mode"].annotation),
        limit=TRAINING_ROWS,
    )


@bp.post("/training")
@operator_required
def training_queue() -> Response | tuple[str, int]:
    """Queue a job from the form (operators, admins; actor: the person), CSRF-checked; errors keep
    the form filled."""
    check_csrf()
    form = {k: request.form.get(k, "").strip() for k in TRAINING_FORM}
    try:
        spec = TrainingJobSpec.model_validate({k: v for k, v in form.items() if v})
        job = hub_ext.services.training.queue(spec, actor())
    except ValidationError as exc:
        flash(f"Not queued: {validation_message(exc)}")
        return _training_page(form), 422
    except TrainingError as exc:
        flash(f"Not queued: {exc.message}")
        return _training_page(form), exc.status
    flash(f"queued: {spec.name} {spec.version} (job {job.job_id})")
    return redirect(url_for("web.training_page"))


@bp.post("/training/<job_id>/cancel")
@operator_required
def training_cancel(job_id: str) -> Response:
    """Cancel a queued job, or ask a running job's trainer to stop (operators, admins; actor: the
    person), CSRF-checked."""
    check_csrf()
    try:
        job = hub_ext.services.training.cancel(job_id, actor())
    except TrainingError as exc:
        flash(f"cancel refused: {exc.message}")
    else:
        if job.state == "cancelled":
            flash(f"cancel: job {job_id} cancelled")
        else:
            flash(f"cancel: requested; the trainer of job {job_id} stops at its next progress report")
    return redirect(url_for("web.training_page"))
