"""``python -m dode_demo [flags]``: see dode_demo/cli.py."""

from .cli import main

raise SystemExit(main())
