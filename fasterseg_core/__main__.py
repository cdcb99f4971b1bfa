"""``python -m fasterseg_core <command>``: see :mod:`fasterseg_core.cli`."""

from .cli import main

raise SystemExit(main())
