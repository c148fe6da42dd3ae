"""Alembic upgrade on a real, empty PostgreSQL database."""

from __future__ import annotations

import pytest

from tests.hub.migration_checks import check_upgrade_creates_schema

pytestmark = pytest.mark.integration


def test_migration_creates_tables_on_postgresql(postgres_url):
    check_upgrade_creates_schema(postgres_url)
