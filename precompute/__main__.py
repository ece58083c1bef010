"""``python -m precompute``: see precompute/cli.py."""

from precompute.cli import main

raise SystemExit(main())
