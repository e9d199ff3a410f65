"""``python -m dode_core demo|inspect``: see dode_core/cli.py."""

from .cli import main

raise SystemExit(main())
