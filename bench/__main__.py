"""``python -m bench``: the same as ``python bench/run.py`` (see its docstring)."""

import sys
from pathlib import Path

# The programs in bench/ import each other as top-level modules, as when run as scripts.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import main

main()
