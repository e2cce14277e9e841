"""``python -m lightning_devinterp.cli``: the command line."""

from lightning_devinterp.cli import main

raise SystemExit(main())
