"""``python -m sosp.cli <verb>``: the same as the ``sosp`` console script."""

from . import main

raise SystemExit(main())
