"""Staged model rollouts: ``spec`` (request + states), ``engine`` (start, reconcile, thresholds),
``ticker`` (periodic timeouts in ``serve``) and ``report`` (JSON views for API, dashboard, CLI).

Import the submodules directly; this package file stays empty so the registry can use ``spec``
without pulling in the engine.
"""
