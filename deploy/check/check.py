#!/usr/bin/env python3
"""Checks the deploy kit offline; tests/deploy_kit.rs runs it.

    check.py REPO_DIR

- Renders deploy/kubernetes and each overlay the way `kubectl apply -k`
  would for the features they use (resources, configMapGenerator,
  replicas, strategic-merge patches; see render()), since neither kubectl
  nor kustomize is installed in CI.
- Validates every rendered object with kubernetes-validate, strictly
  (unknown fields are errors), against the oldest and newest Kubernetes
  versions we support.
- Validates deploy/grafana/pushgate.json against
  deploy/check/dashboard.schema.json with jsonschema.
- Prints {"base": [objects], "overlays": {"redis": [objects]},
  "configs": {"base": {...}, "redis": {...}}} as JSON on stdout for the
  Rust test (probes, ports, grace period, the config).

Exits 1 with every problem on stderr.
"""

import copy
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSIONS = ["1.30.0", "1.37.0"]


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge(base, patch):
    """A strategic merge patch, as far as the kit uses it: maps merge,
    lists of maps that all have a `name` merge by name, other lists are
    replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, old in enumerate(out):
                if old["name"] == item["name"]:
                    out[i] = merge(old, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def key(obj):
    return (obj["kind"], obj["metadata"]["name"])


KNOWN = {"apiVersion", "kind", "resources", "configMapGenerator", "replicas", "patches"}


def render(directory, problems):
    """The objects `kubectl apply -k directory` creates, without the
    hash suffix kustomize appends to generated ConfigMap names (the
    Deployment refers to the plain name here)."""
    kpath = os.path.join(directory, "kustomization.yaml")
    (kust,) = load_docs(kpath)
    for k in kust:
        if k not in KNOWN:
            problems.append(f"{kpath}: {k}: not handled by check.py's renderer")
    objects = []
    for res in kust.get("resources", []):
        path = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(path):
            objects += render(path, problems)
        else:
            objects += load_docs(path)
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            with open(os.path.join(directory, f)) as fh:
                data[os.path.basename(f)] = fh.read()
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": gen["name"]},
            "data": data,
        }
        behavior = gen.get("behavior", "create")
        existing = [i for i, o in enumerate(objects) if key(o) == key(cm)]
        if behavior == "create" and existing:
            problems.append(f"{kpath}: ConfigMap {gen['name']} created twice")
        if behavior == "replace":
            if not existing:
                problems.append(f"{kpath}: ConfigMap {gen['name']} to replace is missing")
            objects = [o for o in objects if key(o) != key(cm)]
        objects.append(cm)
    for rep in kust.get("replicas", []):
        hits = [o for o in objects if o["metadata"]["name"] == rep["name"] and "replicas" in o.get("spec", {})]
        if not hits:
            problems.append(f"{kpath}: replicas: no workload {rep['name']}")
        for o in hits:
            o["spec"]["replicas"] = rep["count"]
    for p in kust.get("patches", []):
        ppath = os.path.join(directory, p["path"])
        for patch in load_docs(ppath):
            hits = [i for i, o in enumerate(objects) if key(o) == key(patch)]
            if len(hits) != 1:
                problems.append(f"{ppath}: patches {key(patch)}: {len(hits)} targets")
                continue
            objects[hits[0]] = merge(objects[hits[0]], patch)
    return objects


def validate(name, objects, problems):
    for obj in objects:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.absolute_path)
                problems.append(f"{name}: {key(obj)} (Kubernetes {version}): {path}: {e.message}")
            except Exception as e:  # schema not found, ...
                problems.append(f"{name}: {key(obj)} (Kubernetes {version}): {e}")


def main():
    repo = sys.argv[1]
    kube = os.path.join(repo, "deploy", "kubernetes")
    problems = []
    out = {"base": render(kube, problems), "overlays": {}}
    validate("deploy/kubernetes", out["base"], problems)
    overlays = os.path.join(kube, "overlays")
    for name in sorted(os.listdir(overlays)):
        objects = render(os.path.join(overlays, name), problems)
        validate(f"deploy/kubernetes/overlays/{name}", objects, problems)
        out["overlays"][name] = objects

    with open(os.path.join(repo, "deploy", "check", "dashboard.schema.json")) as f:
        schema = json.load(f)
    with open(os.path.join(repo, "deploy", "grafana", "pushgate.json")) as f:
        dashboard = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    for e in jsonschema.Draft202012Validator(schema).iter_errors(dashboard):
        path = "/".join(str(p) for p in e.absolute_path)
        problems.append(f"deploy/grafana/pushgate.json: {path}: {e.message}")
    # What a JSON schema cannot say: unique panel ids, panels inside the
    # 24-column grid.
    ids = [p.get("id") for p in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("deploy/grafana/pushgate.json: panel ids are not unique")
    for p in dashboard.get("panels", []):
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"deploy/grafana/pushgate.json: panel {p.get('id')}: wider than the grid")

    # The config of each (pushgate.yaml in the ConfigMap), parsed, before
    # ${VAR} interpolation: the test compares its addresses and durations
    # with the Deployment's.
    out["configs"] = {}
    for name, objects in [("base", out["base"])] + sorted(out["overlays"].items()):
        for o in objects:
            if key(o) == ("ConfigMap", "pushgate-config"):
                out["configs"][name] = yaml.safe_load(o["data"]["pushgate.yaml"])
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
