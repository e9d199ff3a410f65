"""``python -m dode_core inspect FILE...``: see dode_core/cli.py."""

from .cli import main

raise SystemExit(main())
