"""Garbage collection: start-up objects frozen out of the collector's way, pauses measured."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from dialguard.gc_pauses import PauseObserver, freeze_startup_objects
from dialguard.metrics import Metrics


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_freezing_takes_the_surviving_objects_out_of_collections(unfrozen: None) -> None:
    gc.unfreeze()
    kept = [[n] for n in range(1000)]
    frozen = freeze_startup_objects()
    assert frozen == gc.get_freeze_count() > len(kept)
    watched = {id(k) for k in kept}
    assert not any(id(o) in watched for o in gc.get_objects()), "frozen: not walked any more"
    gc.unfreeze()
    assert sum(id(o) in watched for o in gc.get_objects()) == len(kept)


def test_each_collection_is_observed_with_its_generation_until_removed() -> None:
    seen: list[tuple[int, float]] = []
    observer = PauseObserver(lambda generation, seconds: seen.append((generation, seconds)))
    observer.install()
    observer.install()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        observer.remove()
    assert [g for g, _ in seen] == [0, 2]
    assert all(0 <= s < 5 for _, s in seen)
    gc.collect()
    assert len(seen) == 2, "a removed observer hears nothing"


def test_pauses_reach_the_metric_by_generation() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, build_version="test")
    observer = PauseObserver(metrics.gc_pause)
    observer.install()
    try:
        gc.collect(2)
    finally:
        observer.remove()
    count = registry.get_sample_value("dialguard_gc_pause_seconds_count", {"generation": "2"})
    assert count is not None and count >= 1
    assert registry.get_sample_value("dialguard_gc_pause_seconds_count", {"generation": "1"}) == 0
