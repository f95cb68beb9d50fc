"""Record the current manifest schema's fingerprint under the current FORMAT_VERSION.

Run it after a deliberate, versioned schema change (see schema/SPEC.md, "Versioning policy"):

    python tools/update_schema_lock.py

It refuses to change the fingerprint of a version that is already recorded: a released
version's schema never changes. Bump FORMAT_VERSION (trtpack/format/schema.py) first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trtpack.format.manifest import FORMAT_VERSION, schema_fingerprint  # noqa: E402

LOCK = ROOT / "schema" / "schema.lock.json"


def main() -> int:
    lock = json.loads(LOCK.read_text()) if LOCK.exists() else {}
    version = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"
    current = schema_fingerprint(FORMAT_VERSION[0])
    recorded = lock.get(version)
    if recorded == current:
        print(f"schema.lock.json already records {version}")
        return 0
    if recorded is not None:
        print(
            f"version {version} is recorded with another fingerprint: a released schema never "
            "changes. Bump FORMAT_VERSION in trtpack/format/schema.py (minor for a new optional "
            "field, major otherwise) and add a migration step.",
            file=sys.stderr,
        )
        return 1
    lock[version] = current
    LOCK.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    print(f"recorded {version}: {current}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
