#!/usr/bin/env python3
"""Kubernetes' JSON schemas for kubeconform, made from each minor's own OpenAPI document, and
from CustomResourceDefinitions.

    tests/release/k8s-schemas.py kubernetes OUTDIR VERSION...   # e.g. OUTDIR v1.35.4 v1.34.4
    tests/release/k8s-schemas.py crds OUTDIR SOURCE...          # a CRD file, or MODULE@VERSION:PATH

`crds` writes OUTDIR/KIND-GROUP-VERSION.json for each version of each CRD (its openAPIV3Schema,
made strict), from a file or from a file of a Go module (the proxy).

For each Kubernetes version, `kubernetes` reads api/openapi-spec/swagger.json from the k8s.io/kubernetes module zip
(the Go module proxy, `go env GOPROXY`; kubeconform's own schema repository is not reachable
here) and writes OUTDIR/vX.Y.Z-standalone-strict/, the layout kubeconform's -schema-location
expects: `_definitions.json` (every definition, made strict) and one small file per kind,
`KIND[-GROUP]-VERSION.json` (lower case, GROUP the first label of the API group), that refers to
its definition. What it changes, as kubeconform's schemas do (after instrumenta/openapi2jsonschema):

  - strict: every object schema with properties gets additionalProperties: false, so a field
    the API does not have is an error (kubectl --validate=strict refuses it too);
  - int-or-string fields (format int-or-string) accept an integer or a string;
  - a Quantity accepts a number or a string (`cpu: 1` and `memory: 1Gi`);
  - a kind's apiVersion and kind accept only its own.
"""

import copy
import io
import json
import os
import subprocess
import sys
import urllib.request
import zipfile


def proxy() -> str:
    out = subprocess.run(["go", "env", "GOPROXY"], check=True, capture_output=True, text=True).stdout.strip()
    for entry in out.replace("|", ",").split(","):
        if entry.startswith("http"):
            return entry.rstrip("/")
    sys.exit(f"k8s-schemas: no HTTP Go module proxy in GOPROXY={out!r}")


def module_file(module: str, version: str, path: str) -> bytes:
    """A file of a Go module, from the module proxy's zip of it."""
    url = f"{proxy()}/{module}/@v/{version}.zip"
    with urllib.request.urlopen(url, timeout=300) as resp:
        data = resp.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(f"{module}@{version}/{path}")


def swagger(version: str) -> dict:
    return json.loads(module_file("k8s.io/kubernetes", version, "api/openapi-spec/swagger.json"))


def strict(schema):
    """additionalProperties: false on every object with properties; int-or-string as either."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def file_name(group: str, version: str, kind: str) -> str:
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind}{suffix}.json".lower()


def convert(doc: dict, outdir: str) -> int:
    definitions = {name: strict(d) for name, d in doc["definitions"].items()}
    quantity = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    if quantity in definitions:
        definitions[quantity] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "_definitions.json"), "w") as f:
        json.dump({"definitions": definitions}, f)
    kinds = 0
    for name, d in doc["definitions"].items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
            api_version = f"{group}/{version}" if group else version
            schema = copy.deepcopy(definitions[name])
            props = schema.get("properties", {})
            if "apiVersion" in props and "kind" in props:
                props["apiVersion"] = {"type": "string", "enum": [api_version]}
                props["kind"] = {"type": "string", "enum": [kind]}
            # Its properties' $refs point into _definitions.json, beside it.
            text = json.dumps(schema).replace('"#/definitions/', '"_definitions.json#/definitions/')
            with open(os.path.join(outdir, file_name(group, version, kind)), "w") as f:
                f.write(text)
            kinds += 1
    return kinds


def crd_schemas(source: str, outdir: str) -> int:
    import yaml  # python3-yaml (tests/setup-machine.sh)

    if os.path.exists(source):
        with open(source, "rb") as f:
            text = f.read()
    else:
        module_at, path = source.split(":", 1)
        module, version = module_at.split("@", 1)
        text = module_file(module, version, path)
    os.makedirs(outdir, exist_ok=True)
    written = 0
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for v in spec["versions"]:
            schema = strict(v["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{v['name']}"]}
            props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
            props.setdefault("metadata", {"type": "object"})
            with open(os.path.join(outdir, file_name(spec["group"], v["name"], spec["names"]["kind"])), "w") as f:
                json.dump(schema, f)
            written += 1
    return written


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] not in ("kubernetes", "crds"):
        sys.exit(__doc__)
    what, out = sys.argv[1], sys.argv[2]
    for arg in sys.argv[3:]:
        if what == "kubernetes":
            kinds = convert(swagger(arg), os.path.join(out, f"{arg}-standalone-strict"))
            print(f">> [k8s-schemas] Kubernetes {arg}: {kinds} kinds", file=sys.stderr)
        else:
            print(f">> [k8s-schemas] {arg}: {crd_schemas(arg, out)} CRD versions", file=sys.stderr)


if __name__ == "__main__":
    main()
