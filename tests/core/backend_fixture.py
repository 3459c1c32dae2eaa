"""The core suites' name for the backend fixtures, which live in tests/backend_stores.py (shared with the
Airflow and ecFlow suites): ``from backend_fixture import any_store_fixture, aviso_double_fixture``."""

from __future__ import annotations

from backend_stores import BACKENDS, AvisoServerDouble, any_store_fixture, aviso_double_fixture

__all__ = ["BACKENDS", "AvisoServerDouble", "any_store_fixture", "aviso_double_fixture"]
