"""Markers by directory: tests/unit -> unit, tests/integration -> integration, tests/e2e -> e2e,
tests/faults -> faults."""

from __future__ import annotations

from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(item.path).relative_to(_TESTS)
        kind = relative.parts[0] if len(relative.parts) > 1 else "unit"
        if kind in {"unit", "integration", "e2e", "faults"}:
            item.add_marker(getattr(pytest.mark, kind))
