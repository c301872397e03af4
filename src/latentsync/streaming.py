"""Stages joined by bounded queues: each runs in a thread of its own and hands items to the next in order, so
a long stream goes through with a few items in memory at a time.

`Stage(name, produce, depth)` runs `produce(emit)` in a daemon thread; iterating over the stage yields what it
emitted, re-raising in the consumer an exception of the producer; `close()` stops it early.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

DONE = object()


class Stage:
    """Runs `produce(emit)` in a daemon thread; items come out of a bounded queue in order.

    Exceptions raised in the thread are re-raised in the consumer; `close()` stops the producer early."""

    def __init__(self, name: str, produce: Callable[[Callable[[object], None]], None], depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self.thread.start()

    def _emit(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise Stopped

    def _run(self, produce) -> None:
        try:
            produce(self._emit)
        except Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            self.error = e
        finally:
            while True:  # the end marker must get through even if the consumer is slow
                try:
                    self.queue.put(DONE, timeout=0.1)
                    break
                except queue.Full:
                    if self.stop.is_set():
                        break

    def __iter__(self) -> Iterator:
        while True:
            item = self.queue.get()
            if item is DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=10)


class Stopped(Exception):
    pass
