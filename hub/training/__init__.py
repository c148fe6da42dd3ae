"""The training-job queue: ``service`` holds the job state machine that the REST routes
(:mod:`hub.api.training`), the dashboard and the operator CLI drive; ``leukonet trainer serve``
works from it over the API. The request and report shapes live in :mod:`shared.training`.

Import the submodule directly; this package file stays empty.
"""
