"""Validates custom resources against the openAPIV3Schema of their CRDs, as the API server does
with `kubectl apply`'s strict field validation: unknown fields are errors (except where the
schema preserves them), types, enums and required fields are checked.

    python3 validate_custom_resources.py CRDS.yaml FILE.yaml...

Documents whose group and kind no CRD in CRDS.yaml defines are skipped (core kinds are
kubernetes-validate's). Prints one line per checked document; exits 1 on the first file with an
invalid one. jsonschema and PyYAML come with kubernetes-validate (`cargo xtask setup`).
"""

import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with additionalProperties false wherever it lists properties and neither
    preserves unknown fields nor says what other properties may be."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def main(crds_path, files):
    schemas = {}
    with open(crds_path) as f:
        for crd in yaml.safe_load_all(f):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                api_version = f"{spec['group']}/{version['name']}"
                schema = strict(version["schema"]["openAPIV3Schema"])
                # Every object's own fields; metadata is checked by the API server's schema.
                schema.setdefault("properties", {}).update(
                    {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                    }
                )
                schemas[(api_version, spec["names"]["kind"])] = schema
    failed = False
    checked = 0
    for path in files:
        with open(path) as f:
            for index, document in enumerate(yaml.safe_load_all(f), start=1):
                if not document:
                    continue
                key = (document.get("apiVersion"), document.get("kind"))
                schema = schemas.get(key)
                if schema is None:
                    continue
                checked += 1
                errors = sorted(
                    jsonschema.Draft7Validator(schema).iter_errors(document),
                    key=lambda e: list(e.path),
                )
                name = document.get("metadata", {}).get("name")
                for error in errors:
                    where = "/".join(str(p) for p in error.path)
                    print(f"ERROR {path} document {index} {key[1]}/{name}: {where}: {error.message}")
                    failed = True
                if not errors:
                    print(f"OK {path} document {index} {key[1]}/{name}")
    print(f"checked {checked} custom resources")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
