"""Reads the rendered kustomize output and the example custom resources, validates the
examples against the CRD's openAPIV3Schema (as JSON Schema, with the x-kubernetes-* keys and
defaults set aside), and prints one JSON summary the Rust test asserts on. Kubernetes' own
schemas are checked by `kubernetes-validate`, which the test runs separately.

usage: check_manifests.py RENDERED.yaml EXAMPLE.yaml...
"""
import copy
import json
import sys

import jsonschema
import yaml


def strip(schema):
    """The CRD schema as plain JSON Schema: drop the Kubernetes extensions, and refuse unknown
    fields as the API server does under strict field validation (`kubectl --validate=strict`)
    instead of pruning them."""
    if isinstance(schema, dict):
        out = {k: strip(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strip(v) for v in schema]
    return schema


def errors(validator, obj):
    return sorted(
        "/".join(str(p) for p in e.absolute_path) + ": " + e.validator
        for e in validator.iter_errors(obj)
    )


def main():
    rendered = list(yaml.safe_load_all(open(sys.argv[1])))
    out = {"objects": [], "crd": None, "examples": {}, "mutants": {}}
    crd_schema = None
    for o in rendered:
        md = o.get("metadata", {})
        out["objects"].append([o["kind"], md.get("namespace", ""), md.get("name", "")])
        if o["kind"] == "CustomResourceDefinition":
            v = o["spec"]["versions"][0]
            crd_schema = strip(v["schema"]["openAPIV3Schema"])
            out["crd"] = [o["spec"]["group"], v["name"], o["spec"]["names"]["kind"]]
        if o["kind"] == "DaemonSet":
            pod = o["spec"]["template"]["spec"]
            c = next(c for c in pod["containers"] if c["name"] == "agent")
            sc = c["securityContext"]
            out["daemonset"] = {
                "hostPID": pod.get("hostPID", False),
                "privileged": sc.get("privileged", False),
                "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem", False),
                "add": sc["capabilities"]["add"],
                "drop": sc["capabilities"]["drop"],
                "env": {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                        for e in c.get("env", [])},
                "liveness": c["livenessProbe"]["httpGet"]["path"],
                "readiness": c["readinessProbe"]["httpGet"]["path"],
                "mounts": {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]},
                "strategy": o["spec"]["updateStrategy"]["type"],
                "config": [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v],
            }
        if o["kind"] == "DaemonSet":
            pod = o["spec"]["template"]["spec"]
            out["daemonset"]["containers"] = sorted(c["name"] for c in pod["containers"])
            out["daemonset"]["args"] = c.get("args", [])
            out["daemonset"]["hostNetwork"] = pod.get("hostNetwork", False)
        if o["kind"] == "Deployment":
            pod = o["spec"]["template"]["spec"]
            out["deployment"] = {
                "name": md["name"],
                "hostNetwork": pod.get("hostNetwork", False),
                "nodeSelector": pod.get("nodeSelector", {}),
                "args": pod["containers"][0].get("args", []),
            }
        if o["kind"] == "ClusterRole":
            out.setdefault("rules", {})[md["name"]] = [
                [r["apiGroups"], r["resources"], r["verbs"]] for r in o["rules"]
            ]
        if o["kind"] == "ConfigMap":
            out["configmap"] = [md["name"], sorted(o["data"])]
    validator = jsonschema.Draft7Validator(crd_schema)
    for path in sys.argv[2:]:
        for o in yaml.safe_load_all(open(path)):
            out["examples"][o["metadata"]["name"]] = errors(validator, o)
            # The schema must refuse what it should: each mutant names the one fault.
            bad = copy.deepcopy(o)
            bad["spec"]["steps"] = [0, 150]
            bad["spec"]["ttl"] = "15 minutes"
            del bad["spec"]["selector"]
            bad["spec"]["unknownKey"] = True
            out["mutants"][o["metadata"]["name"]] = errors(validator, bad)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)


main()
