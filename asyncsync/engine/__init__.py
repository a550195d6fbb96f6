"""The engine: how orders move from an ``OrderSource`` into an ``OrderSink``.

``listing`` (concurrent paginated listings streamed through a bounded queue to one
writer), ``details`` (the enrichment pass: details only where needed, most useful
first) and ``cycle`` (what an incremental cycle lists). The engine sees the Tiny client
and the store only through the Protocols of :mod:`asyncsync.seams`.
"""
