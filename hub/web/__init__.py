"""The dashboard: sign-in (:mod:`hub.web.login`), the fleet pages (:mod:`hub.web.views`), one
result with its cells (:mod:`hub.web.results`), each person's account (:mod:`hub.web.account`),
and the admin pages for people and tokens (:mod:`hub.web.people`) and agents
(:mod:`hub.web.admin_agents`)."""

from __future__ import annotations

from flask import Flask

from hub.web import account, admin_agents, explorer, login, people, results, review, views
from hub.web.guards import template_globals

bp = views.bp

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    """Register the dashboard's blueprints, Flask-Login and the template globals on ``app``."""
    login.login_manager.init_app(app)
    app.context_processor(template_globals)
    for blueprint in (
        views.bp,
        login.bp,
        account.bp,
        people.bp,
        admin_agents.bp,
        results.bp,
        review.bp,
        explorer.bp,
    ):
        app.register_blueprint(blueprint)
