from __future__ import annotations

from services.registry.service import main

if __name__ == "__main__":
    raise SystemExit(main())
