"""Operator commands that talk to the hub's REST API: ``leukonet models|agents|rollout|training ...``.

Every command takes ``--hub URL`` (env ``LEUKONET_HUB_URL``), ``--token`` (env ``LEUKONET_TOKEN``)
and ``--json`` (print the API's JSON instead of a table). Exit codes: 0 success, 1 the API
refused or could not be reached (its error message is printed), 2 usage errors;
``rollout status --watch`` ends with 0 when the rollout completed, 1 when it was rolled back or
aborted, 3 when it paused (an operator must decide), 4 when ``--timeout`` expired first;
``training watch`` ends with 0 when the job succeeded, 1 when it failed or was cancelled, 4 when
``--timeout`` expired first.

One module per command group (:mod:`hub.operator.models`, :mod:`~hub.operator.agents`,
:mod:`~hub.operator.rollout`, :mod:`~hub.operator.training`); :mod:`hub.operator.common` holds the
options, the client (:mod:`shared.hubclient`) and the output helpers. Nothing here imports Flask or
SQLAlchemy: the operator CLI runs on a plain ``pip install leukonet``.
"""
