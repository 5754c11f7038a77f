from __future__ import annotations

from ploinkyd.cli.main import main

raise SystemExit(main())
