"""One runtime per store identity: what the waits and listeners of a process share for one store.

A :class:`Runtime` holds the store's backend, the shared watches of its waiters (:class:`~.watch.WatchHub`),
and the parts the layers above it add once per store (the waiters' registry keeper, the shared reads),
and closes them all with :meth:`Runtime.close` or at the end of ``with``. :func:`runtime_for` hands out the
process's runtime of a store's identity (so a thousand triggers of one store share one watch per prefix);
a test can make its own and close it, and nothing of it outlives the close.

The runtime sits below the modules whose parts it holds: they give it their part's maker
(:meth:`Runtime.part`), it never imports them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from .storelike import StoreLike
from .watch import PrefixWatch, WatchHub

log = logging.getLogger(__name__)


class Closable(Protocol):
    def close(self) -> None: ...


PartT = TypeVar("PartT", bound=Closable)


class Runtime:
    """The backend, shared watches and shared parts of one store (see the module's text)."""

    def __init__(self, store: StoreLike) -> None:
        self.store = store
        self.backend = store.backend
        self.hub = WatchHub()
        self._lock = threading.Lock()
        self._parts: dict[Hashable, Closable] = {}
        self._stopper: ThreadPoolExecutor | None = None
        self.closed = False

    def part(self, key: Hashable, make: Callable[[], PartT]) -> PartT:
        """The part kept under ``key``, made by ``make`` the first time (closed with the runtime)."""
        with self._lock:
            part = self._parts.get(key)
            if part is None:
                part = self._parts[key] = make()
            return part  # type: ignore[return-value]  # one maker per key: it made this type

    def watches(self) -> list[PrefixWatch]:
        """The shared watches running now."""
        return self.hub.watches()

    def stop_later(self, stop: Callable[[], None]) -> None:
        """Run ``stop`` (a watch's or a stream's end, which may block a little) in the runtime's stopping
        thread: a released wait returns at once, and the ended watch is out of the hub already, so a new
        wait starts a new one meanwhile."""
        with self._lock:
            if self._stopper is None:
                self._stopper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aviso-watch-stopper")
            stopper = self._stopper
        try:
            stopper.submit(stop)
        except RuntimeError:  # closed meanwhile: stop here
            stop()

    def close(self) -> None:
        """Stop the shared watches, close the parts and the backend; the runtime is out of :func:`runtime_for`'s
        hands from now on (a later call makes a new one)."""
        with self._lock:
            self.closed = True
            parts, self._parts = list(self._parts.values()), {}
            stopper, self._stopper = self._stopper, None
        _forget(self)
        for watch in self.hub.close():
            watch.stop()
        if stopper is not None:
            stopper.shutdown(wait=True)
        for part in parts:
            part.close()
        self.backend.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_RUNTIMES: dict[tuple[Any, ...], Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _key(store: StoreLike) -> tuple[Any, ...]:
    # A child process (fork) inherits the registry but not the threads behind it: it makes its own runtimes.
    return (os.getpid(), store.config.identity, store.config.max_txn_ops)


def runtime_for(store: StoreLike) -> Runtime:
    """The process's runtime of ``store``'s identity, made (around ``store``) the first time."""
    key = _key(store)
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None or runtime.closed:
            runtime = _RUNTIMES[key] = Runtime(store)
        return runtime


def runtimes() -> list[Runtime]:
    """The runtimes of this process now."""
    with _RUNTIMES_LOCK:
        return [runtime for key, runtime in _RUNTIMES.items() if key[0] == os.getpid()]


def _forget(runtime: Runtime) -> None:
    with _RUNTIMES_LOCK:
        for key in [key for key, kept in _RUNTIMES.items() if kept is runtime]:
            del _RUNTIMES[key]


class AllWatches:
    """The shared watches of every runtime of the process (for status pages and tests)."""

    def watches(self) -> list[PrefixWatch]:
        return [watch for runtime in runtimes() for watch in runtime.watches()]


__all__ = ["AllWatches", "Runtime", "runtime_for", "runtimes"]
