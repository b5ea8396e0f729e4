"""The worker's event-loop choice (PACS_EVENT_LOOP)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator

import pytest

from stream_processors.runner import install_event_loop
from stream_processors.settings import ProcessorSettings


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    before = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(before)


def test_uvloop_is_the_default_and_installs_its_policy() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert ProcessorSettings().event_loop == "uvloop"
    assert install_event_loop("uvloop") == "uvloop"
    assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


def test_asyncio_leaves_the_policy_alone() -> None:
    before = asyncio.get_event_loop_policy()
    assert install_event_loop("asyncio") == "asyncio"
    assert asyncio.get_event_loop_policy() is before


def test_missing_uvloop_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    before = asyncio.get_event_loop_policy()
    with caplog.at_level(logging.WARNING, logger="stream_processors.runner"):
        assert install_event_loop("uvloop") == "asyncio"
    assert asyncio.get_event_loop_policy() is before
    assert "uvloop cannot be imported" in caplog.text
