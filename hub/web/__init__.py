"""The dashboard: password login, logout, and the fleet + latest-results page."""

from hub.web.views import bp

__all__ = ["bp"]
