"""``python -m precompute.report``: see precompute/report/__init__.py."""

from precompute.report.cli import main

raise SystemExit(main())
