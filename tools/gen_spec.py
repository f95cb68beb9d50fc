"""Regenerate the field tables of schema/SPEC.md from the JSON Schema (the source of truth).

python tools/gen_spec.py          # rewrite SPEC.md in place
python tools/gen_spec.py --check  # exit 1 if SPEC.md is out of date (the tests do this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema" / "manifest.v1.schema.json"
SPEC = ROOT / "schema" / "SPEC.md"
BEGIN, END = "<!-- fields:begin (tools/gen_spec.py) -->", "<!-- fields:end -->"


def _type(prop: dict) -> str:
    if "$ref" in prop:
        return f"`{prop['$ref'].rsplit('/', 1)[-1]}`"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "oneOf" in prop:
        return " or ".join(_type(p) for p in prop["oneOf"])
    t = prop.get("type", "any")
    if t == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p) for p in prop["prefixItems"]) + "]"
        return f"array of {_type(prop.get('items', {}))}"
    if t == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {_type(prop['additionalProperties'])}"
    if isinstance(t, list):
        return " \\| ".join(t)
    return t


def _rows(obj: dict) -> list[str]:
    required = set(obj.get("required", ()))
    rows = []
    for name, prop in obj.get("properties", {}).items():
        desc = prop.get("description", "").replace("|", "\\|")
        rows.append(
            f"| `{name}` | {_type(prop)} | {'yes' if name in required else 'no'} | {desc} |"
        )
    return rows


def tables(schema: dict) -> str:
    head = "| field | type | required | meaning |\n|---|---|---|---|"
    out = [f"#### manifest (top level)\n\n{head}", *_rows(schema)]
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object" and "properties" in definition:
            text = f"\n#### `{name}`\n"
            if definition.get("description"):
                text += f"\n{definition['description']}\n"
            out += [f"{text}\n{head}", *_rows(definition)]
    return "\n".join(out)


def render(spec: str, schema: dict) -> str:
    before, rest = spec.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{tables(schema)}\n{END}{after}"


def main() -> int:
    schema = json.loads(SCHEMA.read_text())
    spec = SPEC.read_text()
    new = render(spec, schema)
    if "--check" in sys.argv:
        if new != spec:
            print("schema/SPEC.md is out of date: run python tools/gen_spec.py", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
