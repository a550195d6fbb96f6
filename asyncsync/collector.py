"""CPython's garbage collector, set for a process that streams many short-lived objects.

A sync allocates a few container objects per order (the decoded JSON, the record, its
COPY row) that reference counting frees batch by batch. With CPython's default thresholds
(700, 10, 10) those allocations alone trigger hundreds of young and dozens of middle
collections over 100,000 orders, and full ones that walk every live object, the modules
loaded at start-up included: about a fifth of the command's CPU here (``bench/``, the
end-to-end scenario, and the README's benchmark section).

:func:`tune` moves what start-up built into the permanent generation (modules, classes
and constants are never garbage) and collects the young generation every
:data:`YOUNG_THRESHOLD` allocations instead of 700. Reference cycles are still
collected, in larger and rarer passes.
"""

from __future__ import annotations

import gc

#: Net container allocations between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, and middle ones per full one (defaults: 10, 10).
OLDER_THRESHOLDS = (20, 10)


def tune() -> None:
    """Freeze what exists now and raise the collection thresholds; safe to call again.

    No collection first: after the imports it finds a handful of unreachable objects
    and costs 30-40 ms of every command's start here."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
