"""Rewrite infra/schema/findings-columns.json from detector/sinks/ingestion.py (the single source of the columns).

Run from the repository root: python infra/schema/generate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from detector.sinks.ingestion import SCHEMA_PATH, schema_document


def main() -> None:
    SCHEMA_PATH.write_text(json.dumps(schema_document(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
