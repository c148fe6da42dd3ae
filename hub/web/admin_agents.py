"""``/admin/agents`` (blueprint ``admin_agents``, admins only): the agents section of the dashboard.

Lists every registered agent (id, lab, state, enrolled, revoked, last seen) and the enrollment
tokens not used yet; issues an enrollment token (optionally bound to an agent id and a lab, with a
lifetime) and shows its value once beside the exact command to run on the lab PC; revokes an agent
after a confirmation page. The work is done by the enrollment service ``services.enrollment``
(:mod:`hub.identity.enrollment`); its refusals
(:class:`hub.errors.HubError`) are shown with their status.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from hub.db.models import Agent
from hub.errors import HubError
from hub.extensions import hub_ext
from hub.identity.enrollment import Enrollment, IssuedEnrollment
from hub.web.guards import admin_required, check_csrf, me

bp = Blueprint("admin_agents", __name__, template_folder="../templates")
MAX_LIFETIME_HOURS = 30 * 24


def enrollment() -> Enrollment:
    """The app's enrollment service."""
    return hub_ext.services.enrollment


def _page(status: int = 200, error: str | None = None, issued: IssuedEnrollment | None = None) -> Any:
    service = enrollment()
    with hub_ext.services.db.session() as s:
        agents = list(s.scalars(select(Agent).order_by(Agent.agent_id)))
    html = render_template(
        "admin_agents.html",
        agents=agents,
        pending=service.pending_tokens(),
        error=error,
        issued=issued,
        public_url=hub_ext.services.config.public_url,
        default_hours=hub_ext.services.config.enrollment.token_ttl_s / 3600,
        max_hours=MAX_LIFETIME_HOURS,
    )
    return html, status


@bp.get("/admin/agents")
@admin_required
def agents_page() -> Any:
    return _page()


def _lifetime_s(hours: str) -> int | None:
    hours = hours.strip()
    if not hours:
        return None
    try:
        value = float(hours)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_LIFETIME_HOURS:
        raise ValueError(
            f"lifetime: enter hours from 1 to {MAX_LIFETIME_HOURS} (e.g. 24), "
            "or leave it empty for the default"
        )
    return round(value * 3600)


@bp.post("/admin/agents/enrollment-tokens")
@admin_required
def issue_token() -> Any:
    """Issue an enrollment token; the page answering shows the value and the command once."""
    check_csrf()
    agent_id = request.form.get("agent_id", "").strip() or None
    lab = request.form.get("lab", "").strip() or None
    try:
        ttl_s = _lifetime_s(request.form.get("lifetime_hours", ""))
        issued = enrollment().issue(me().username, agent_id, lab, ttl_s)
    except ValueError as exc:
        return _page(422, str(exc))
    except HubError as exc:
        return _page(exc.status, f"Not issued: {exc.message}")
    return _page(201, issued=issued)


@bp.get("/admin/agents/<agent_id>/revoke")
@admin_required
def confirm_revoke(agent_id: str) -> Any:
    """Ask before revoking: what revoking does, and a form that does it."""
    with hub_ext.services.db.session() as s:
        agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
    if agent is None:
        abort(404, description=f"agent {agent_id[:64]!r} is not registered")
    return render_template("agent_revoke.html", agent=agent)


@bp.post("/admin/agents/<agent_id>/revoke")
@admin_required
def revoke(agent_id: str) -> Response | Any:
    """Revoke an agent (confirmed on the page before): broker account, API tokens, ingest."""
    check_csrf()
    if request.form.get("confirm") != "yes":
        return redirect(url_for("admin_agents.confirm_revoke", agent_id=agent_id))
    try:
        enrollment().revoke(agent_id, me().username)
    except HubError as exc:
        return _page(exc.status, f"Revoke of {agent_id[:64]} refused: {exc.message}")
    flash(f"agent {agent_id} revoked: its broker account and API tokens are gone, its messages refused")
    return redirect(url_for("admin_agents.agents_page"))
