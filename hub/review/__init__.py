"""Review and sign-off of results (issue #13): reviewers confirm or reclassify what the model said,
someone signs, and only then is a result final.

Modules, one concern each:

* :mod:`~hub.review.policy`: the rules as data: states, actions, triage priorities, the labels a
  reviewer may choose, and :class:`~hub.review.policy.ReviewSettings` (config ``review``).
* :mod:`~hub.review.statuses`: the ``review_status`` rows: one set-based INSERT per ingest batch,
  and :func:`~hub.review.statuses.ensure_status` for results that predate review.
* :mod:`~hub.review.service`: the state machine: confirm, reclassify, comment (a whole result or
  one cell of a field), sign and the second signature, each appended to the audit trail.
* :mod:`~hub.review.queue`: the queue, most urgent first, paged by a keyset cursor.
* :mod:`~hub.review.report`: the JSON shapes the API and the dashboard show.

This package imports nothing at package level, so :mod:`hub.config` can import
:mod:`hub.review.policy` for its ``review`` section without pulling in the database layer.
"""
