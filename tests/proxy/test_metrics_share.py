"""Several serving processes' metrics as one scrape (`proxy.metrics_share`), in one process:
each `SharedMetrics` takes a slot of the folder as a serving process would."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics_share import SharedMetrics


def exposition(calls: float, queued: float) -> bytes:
    return (
        "# HELP memento_requests_total Calls.\n"
        "# TYPE memento_requests_total counter\n"
        f'memento_requests_total{{tenant="acme"}} {calls}\n'
        "# HELP memento_write_queue_depth Jobs.\n"
        "# TYPE memento_write_queue_depth gauge\n"
        f'memento_write_queue_depth{{tenant="acme"}} {queued}\n'
    ).encode()


def samples(text: bytes) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    ]


def test_a_scrape_has_every_live_process_and_the_stores_gauges_once(tmp_path: Path) -> None:
    first, second, third = (SharedMetrics(tmp_path) for _ in range(3))
    assert (first.slot, second.slot, third.slot) == (0, 1, 2)
    second.leave_snapshot(exposition(calls=5, queued=7))
    third.leave_snapshot(exposition(calls=9, queued=7))
    third.close()  # ended and not replaced: its last snapshot is not served

    scraped = samples(first.merged(exposition(calls=3, queued=7)))

    assert sorted(scraped, key=lambda s: str(s)) == sorted(
        [
            ("memento_requests_total", {"tenant": "acme", "process": "0"}, 3.0),
            ("memento_requests_total", {"tenant": "acme", "process": "1"}, 5.0),
            ("memento_write_queue_depth", {"tenant": "acme"}, 7.0),
        ],
        key=lambda s: str(s),
    )
    # The answering process left its own for the others at the same time.
    assert samples(second.merged(exposition(calls=6, queued=1)))[0:2] == [
        ("memento_requests_total", {"tenant": "acme", "process": "1"}, 6.0),
        ("memento_requests_total", {"tenant": "acme", "process": "0"}, 3.0),
    ]


def test_a_replacement_takes_the_slot_its_predecessor_left(tmp_path: Path) -> None:
    first, second = SharedMetrics(tmp_path), SharedMetrics(tmp_path)
    first.close()
    assert SharedMetrics(tmp_path).slot == 0
    second.close()
