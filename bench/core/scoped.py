"""A value a thread sets for the code it calls, without passing it through every layer between.

    SCOPE = ThreadScoped()
    with SCOPE.using(value):   # this thread's calls see SCOPE.get() == value, others see theirs
        model(x)

Used where a module deep in a model needs one step's input for its batch rows: the sparse
convolutions' active mask (bench.methods.spark_sparse) and the per-sample stochastic-depth draws
(bench.train.parts). Thread-local, so the parts of a step split over threads each see their own.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator


class ThreadScoped:
    """One value per thread, set for a `with` block and restored after it; None when unset."""

    def __init__(self):
        self._local = threading.local()

    def get(self) -> Any:
        return getattr(self._local, "value", None)

    @contextlib.contextmanager
    def using(self, value: Any) -> Iterator[None]:
        previous = self.get()
        self._local.value = value
        try:
            yield
        finally:
            self._local.value = previous
