"""Cell-level analysis on the agent: a field's white cells are found, cropped, classified one by one
and decided per field; every input is scored for the out-of-distribution (``unfamiliar``) flag.

- :mod:`agents.cells.prepare`: the finder and the crops of one field (decode thread).
- :mod:`agents.cells.gather`: a field's per-crop inference callbacks, handed to the writer once.
- :mod:`agents.cells.unfamiliar`: OOD scores, the field's flag, and "never a confident negative".
- :mod:`agents.cells.field_result`: a field's cells, counts and decision as result fields.

Import the modules directly: this package imports none of them, so none can form a circle through it.
"""
