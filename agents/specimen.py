"""Specimen (accession) ids from image names: which slide or sample an image belongs to.

Labs name their exports by specimen: a folder per specimen (``S-2024-0173/field01.png``) or a
prefix in the file name (``S-2024-0173_field01.png``). The agent applies one regular expression,
the config's ``specimen.pattern``, to the image's path relative to its source (for the watch
folder: relative to ``watch_dir``, with ``/`` separators; for an HTTP upload: the name the client
gave; camera frames have no specimen), and the named group ``specimen`` of the first match is the
id. The hub groups results by it.

The default, :data:`DEFAULT_PATTERN`, takes the first folder level, else the file name's prefix
before its first ``_``; a name with neither (``scan1.png``) has no specimen. A pattern that does not
compile or has no ``(?P<specimen>...)`` group is a configuration error naming ``specimen.pattern``
(:func:`compile_pattern`). A match that is empty, longer than :data:`MAX_ID_CHARS` or holds a
control character is no id: the image is classified as usual, without a specimen.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

#: first folder level, else the file name's prefix before its first ``_``
DEFAULT_PATTERN = r"^(?P<specimen>[^/]+?)(?:/|_[^/]*$)"
#: names longer than this are cut before matching (bounds the regex's work on hostile names)
MAX_NAME_CHARS = 1024
#: the longest specimen id a result may carry (``ClassificationResult.specimen_id``)
MAX_ID_CHARS = 128
MAX_PATTERN_CHARS = 1000
GROUP = "specimen"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, with a named group ``specimen``.

    Raises:
        ValueError: too long, not a regular expression, or without the ``specimen`` group; the
            message says what to write instead.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"pattern is {len(pattern)} characters long; keep it under {MAX_PATTERN_CHARS}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"{pattern!r} is not a valid regular expression ({exc}); e.g. {DEFAULT_PATTERN!r} takes the "
            "first folder, else the file name's prefix before '_'"
        ) from None
    if GROUP not in compiled.groupindex:
        raise ValueError(
            f"{pattern!r} has no named group (?P<specimen>...); put the part of the name that is the "
            f"specimen id in one, e.g. {DEFAULT_PATTERN!r}"
        )
    return compiled


class SpecimenRule:
    """Derives specimen ids with one pattern (see the module docstring). Thread-safe.

    Args:
        pattern: the regular expression with a ``specimen`` group; None: no image has a specimen.
        root: the source folder names are taken relative to (the watch folder); paths outside it
            count by their file name alone.

    Raises:
        ValueError: ``pattern`` is not usable (:func:`compile_pattern`).
    """

    def __init__(self, pattern: str | None = DEFAULT_PATTERN, root: Path | None = None) -> None:
        self.pattern = compile_pattern(pattern) if pattern is not None else None
        self.root = root

    def relative_name(self, name: str, path: Path | None = None) -> str:
        """What the pattern sees: ``path`` relative to ``root`` (``/`` separators) when it is under
        it, else ``name`` (an upload's name; ``\\`` counts as a separator too)."""
        if path is not None and self.root is not None:
            try:
                return PurePosixPath(*path.relative_to(self.root).parts).as_posix()
            except ValueError:
                return path.name
        if path is not None:
            return path.name
        return name.replace("\\", "/")

    def specimen_id(self, name: str, path: Path | None = None) -> str | None:
        """The specimen id of the image called ``name`` (at ``path``, for files), or None.

        Never raises for any name: a name without a match, or whose match is empty, too long or
        holds control characters, has no specimen.
        """
        if self.pattern is None:
            return None
        found = self.pattern.search(self.relative_name(name, path)[:MAX_NAME_CHARS])
        if found is None:
            return None
        value = (found.group(GROUP) or "").strip()
        if not value or len(value) > MAX_ID_CHARS or _CONTROL.search(value):
            return None
        return value
