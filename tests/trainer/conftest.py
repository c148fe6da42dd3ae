"""Trainer test fixtures.

TensorFlow 2.12 / Keras sources hold invalid escape sequences. Python reports them as a
SyntaxWarning when it compiles the files, which happens on every import when no ``.pyc`` can be
written (``PYTHONDONTWRITEBYTECODE=1``, read-only site-packages); pytest's ``filterwarnings =
error`` then turns them into a SyntaxError inside TensorFlow. Importing the stack once here, with
exactly that warning ignored, keeps every other warning an error in the tests themselves.
Tests that touch TensorFlow request the ``ml_stack`` fixture; the others stay fast.
"""

from __future__ import annotations

import importlib
import warnings

import pytest

_THIRD_PARTY = ("tensorflow", "keras", "keras.utils.data_utils", "tf_slim", "tf_slim.nets", "openvino")


@pytest.fixture(scope="session")
def ml_stack() -> None:
    """Request this before any test or fixture that imports TensorFlow or OpenVINO."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in _THIRD_PARTY:
            importlib.import_module(name)
