"""``python -m composefs_py``: the ``composefs-py`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
