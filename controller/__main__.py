"""``python -m controller`` is the ``heddle`` CLI."""

from controller.cli import main

raise SystemExit(main())
