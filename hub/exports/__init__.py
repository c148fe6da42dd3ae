"""Exports of a filtered results view: CSV rows streamed at any size (:mod:`hub.exports.csv`) and
a FHIR R4B Bundle of DiagnosticReport + Observation per result (:mod:`hub.exports.fhir`).

Both take ``(Classification, ReviewStatus | None)`` pairs, as
:func:`hub.api.classifications.export_query` reads them; the routes are in :mod:`hub.api.exports`.
"""
