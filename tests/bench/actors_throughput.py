"""Micro benchmark: tell -> receive throughput of the actors runtime (not a test).

Run: .venv/bin/python tests/bench/actors_throughput.py [messages]
Prints messages per second for one actor with a trivial receive, in a few variants.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from actors import Actor, Pool, correlation_scope


class Counter(Actor[int]):
    """Counts messages; sets `done` when the expected count is reached."""

    def __init__(self, name: str, expected: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.expected = expected
        self.count = 0
        self.done = threading.Event()

    def receive(self, message: int) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()


def measure(label: str, messages: int, send: Callable[[Counter], None], **kwargs: Any) -> None:
    actor = Counter(label, messages, **kwargs).start()
    started = time.perf_counter()
    send(actor)
    assert actor.done.wait(timeout=600)
    elapsed = time.perf_counter() - started
    actor.stop()
    print(f"{label:<44} {messages / elapsed:>12,.0f} msg/s")


def tell_all(messages: int) -> Callable[[Counter], None]:
    def send(actor: Counter) -> None:
        for number in range(messages):
            actor.tell(number)

    return send


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    tracer = TracerProvider().get_tracer("bench")
    measure("tell, capacity 1000", messages, tell_all(messages))
    measure(
        "tell, capacity 1000, bytes bound",
        messages,
        tell_all(messages),
        max_bytes=1 << 30,
        sizeof=lambda message: 8,
    )
    measure("tell, capacity 10 (sender blocks often)", messages, tell_all(messages), capacity=10)

    def traced(actor: Counter) -> None:
        with correlation_scope("bench"), tracer.start_as_current_span("send"):
            tell_all(messages)(actor)

    measure("tell inside a span + correlation id", messages, traced)

    def asking(actor: Counter) -> None:
        futures = [actor.ask(number) for number in range(messages)]
        futures[-1].result(timeout=600)

    measure("ask (one future per message)", messages, asking, capacity=messages)

    # A pool of 4 workers on one mailbox; counts are per worker, so use a shared event.
    done = threading.Event()
    lock = threading.Lock()
    total = [0]

    class PoolCounter(Actor[int]):
        def receive(self, message: int) -> None:
            with lock:
                total[0] += 1
                if total[0] == messages:
                    done.set()

    pool = Pool("pool", lambda i: PoolCounter(f"pc{i}"), 4, capacity=1000).start()
    started = time.perf_counter()
    for number in range(messages):
        pool.tell(number)
    assert done.wait(timeout=600)
    elapsed = time.perf_counter() - started
    pool.stop()
    print(f"{'pool of 4, tell':<44} {messages / elapsed:>12,.0f} msg/s")


if __name__ == "__main__":
    main()
