"""One module per ``--mode``: each exposes ``async def run(settings, ...) -> int`` (exit code)."""
