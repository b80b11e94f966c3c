"""Worker processes that turn a parser's crash, hang or exception into one item's verdict."""

import os
import signal
import time

from nexttoken.errors import UserError
from nexttoken.isolate import map_isolated


def parse(item):
    if item == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if item == "hang":
        time.sleep(60)
    if item == "raise":
        raise ValueError("bad header")
    if item == "refuse":
        raise UserError("not audio")
    if item == "exit":
        os._exit(3)
    return item.upper()


def test_crashes_hangs_and_exceptions_become_verdicts_and_the_rest_is_parsed():
    items = ["a", "segfault", "b", "hang", "raise", "refuse", "exit", "c"]
    seen = []
    start = time.monotonic()
    outcomes = map_isolated(parse, items, timeout=1.0, workers=2, on_done=lambda i, o: seen.append(i))
    assert time.monotonic() - start < 10
    assert [o.value for o in outcomes] == ["A", None, "B", None, None, None, None, "C"]
    errors = {item: o.error for item, o in zip(items, outcomes)}
    assert errors["segfault"] == "crashed (SIGSEGV)"
    assert errors["hang"] == "timed out after 1 s"
    assert errors["raise"] == "ValueError: bad header"
    assert errors["refuse"] == "not audio"
    assert errors["exit"] == "worker exited with code 3"
    assert all(o.ok for item, o in zip(items, outcomes) if item in "abc")
    assert sorted(seen) == list(range(len(items)))


def test_the_same_items_get_the_same_verdicts_in_order_with_any_number_of_workers():
    items = ["x", "segfault", "y", "raise"] * 3
    one = map_isolated(parse, items, workers=1)
    three = map_isolated(parse, items, workers=3)
    assert [(o.value, o.error) for o in one] == [(o.value, o.error) for o in three]
    assert map_isolated(parse, []) == []


def test_a_value_that_cannot_be_pickled_is_a_verdict_not_a_hang():
    outcomes = map_isolated(lambda item: (lambda: item), ["a"], timeout=5.0)
    assert not outcomes[0].ok and "cannot return the result" in outcomes[0].error
