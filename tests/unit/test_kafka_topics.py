"""Topic configurations: compacted, default, and kept for good (the re-snapshot sweeps)."""

from __future__ import annotations

import pytest

from pacs_sync.kafka_topics import TopicSpec, retention_fixes

FOREVER = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


def test_topics_are_created_with_their_retention() -> None:
    assert TopicSpec("t", 1).config == {}
    assert TopicSpec("t", 3, compacted=True).config == {"cleanup.policy": "compact"}
    assert TopicSpec("t", 1, retain_forever=True).config == FOREVER


def test_a_topic_cannot_be_both_compacted_and_kept_for_good() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        TopicSpec("t", 1, compacted=True, retain_forever=True)


def test_an_existing_topic_with_the_default_retention_needs_the_forever_settings() -> None:
    spec = TopicSpec("pacs.pacs._snapshot_sweeps", 1, retain_forever=True)
    default = {"cleanup.policy": "delete", "retention.ms": "604800000", "retention.bytes": "-1"}
    assert retention_fixes(spec, default) == {"retention.ms": "-1"}
    assert retention_fixes(spec, {**FOREVER, "cleanup.policy": "compact"}) == {"cleanup.policy": "delete"}
    assert retention_fixes(spec, {}) == FOREVER, "a setting the broker did not report counts as wrong"


def test_a_topic_already_kept_for_good_or_not_meant_to_be_is_left_alone() -> None:
    spec = TopicSpec("s", 1, retain_forever=True)
    assert retention_fixes(spec, {**FOREVER, "segment.ms": "1000"}) == {}
    assert retention_fixes(TopicSpec("t", 1), {"retention.ms": "1000"}) == {}
    assert retention_fixes(TopicSpec("c", 1, compacted=True), {"retention.ms": "1000"}) == {}
