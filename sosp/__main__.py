"""``python -m sosp <verb>``: the same as the ``sosp`` console script."""

from .cli import main

raise SystemExit(main())
