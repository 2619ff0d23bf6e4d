from __future__ import annotations

from services.gateway.app import main

if __name__ == "__main__":
    raise SystemExit(main())
