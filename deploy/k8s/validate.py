#!/usr/bin/env python3
"""Validate nacosd's Kubernetes manifests; exit non-zero on any failure.

For deploy/k8s/base and every deploy/k8s/overlays/*:

1. Render it: `kubectl kustomize` (or `kustomize build`) when one is installed, else a
   small built-in renderer for the subset of kustomize these manifests use. When
   kubectl is there, both renderings are compared, so the built-in one is checked too.
2. Validate every rendered resource against the Kubernetes OpenAPI schemas, in strict
   mode (unknown fields are errors), for each version in --versions
   (kubernetes-validate; `pip install kubernetes-validate`).
3. Check what nacosd needs and a schema cannot know: replicas equal the cluster size
   the pods derive their member list from, the hardening (non-root, read-only root
   filesystem, no capabilities), probes on the right paths, a writable /tmp, the PDB.
4. Run the pods' start-up script with bash for every ordinal, with a stand-in
   `nacosd` that prints its environment, and check the node id, advertised peer and
   initial members it derives (and that an ordinal beyond the cluster size joins
   through pod 0 instead).

    python3 deploy/k8s/validate.py                  # Kubernetes 1.29 and 1.31
    python3 deploy/k8s/validate.py --versions 1.30,1.33
    python3 deploy/k8s/validate.py --builtin-renderer   # as on a machine without kubectl
"""

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent
DEFAULT_VERSIONS = "1.29,1.31"


class Failure(Exception):
    pass


# ---------------------------------------------------------------- rendering


def kustomize_command():
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render_with_tool(cmd, target):
    out = subprocess.run(cmd + [str(target)], capture_output=True, text=True)
    if out.returncode != 0:
        raise Failure(f"{' '.join(cmd)} {target}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def configmap_hash(data):
    """A content hash for generated ConfigMap names (not kustomize's own encoding; only
    the renamed-on-change property matters here)."""
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def apply_json6902(doc, ops, where):
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] in ("replace", "add"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                if op["op"] == "replace" and last not in parent:
                    raise Failure(f"{where}: replace of missing path {op['path']}")
                parent[last] = op["value"]
        elif op["op"] == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        else:
            raise Failure(f"{where}: built-in renderer does not support op {op['op']}")


def render_builtin(target):
    """Render a kustomization with the features these manifests use: resources (files
    and directories), replicas, configMapGenerator (literals; create/merge) and
    inline JSON 6902 patches targeted by kind and name. Anything else is an error."""
    target = Path(target)
    kfile = target / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    known = {"apiVersion", "kind", "resources", "replicas", "configMapGenerator", "patches"}
    unknown = set(k) - known
    if unknown:
        raise Failure(f"{kfile}: built-in renderer does not support {sorted(unknown)}")

    docs, generators = [], {}
    for res in k.get("resources", []):
        path = target / res
        if path.is_dir():
            sub_docs, sub_gens = render_builtin(path)
            docs += sub_docs
            generators.update(sub_gens)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]

    for gen in k.get("configMapGenerator", []):
        data = dict(kv.split("=", 1) for kv in gen.get("literals", []))
        if gen.get("behavior", "create") == "merge":
            if gen["name"] not in generators:
                raise Failure(f"{kfile}: merge into unknown ConfigMap {gen['name']}")
            generators[gen["name"]]["data"].update(data)
        else:
            generators[gen["name"]] = {"data": data}

    for rep in k.get("replicas", []):
        hit = [d for d in docs if d["metadata"]["name"] == rep["name"] and "replicas" in d.get("spec", {})]
        if not hit:
            raise Failure(f"{kfile}: replicas for unknown {rep['name']}")
        for d in hit:
            d["spec"]["replicas"] = rep["count"]

    for patch in k.get("patches", []):
        t = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        hit = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        if not hit:
            raise Failure(f"{kfile}: patch target {t} matches nothing")
        for d in hit:
            apply_json6902(d, ops, kfile)

    return docs, generators


def finish_builtin(docs, generators):
    """Emit generated ConfigMaps with hashed names and point references at them."""
    names = {}
    out = []
    for name, gen in generators.items():
        hashed = f"{name}-{configmap_hash(gen['data'])}"
        names[name] = hashed
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": hashed}, "data": dict(gen["data"])})
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef")
                if ref and ref["name"] in names:
                    ref["name"] = names[ref["name"]]
        out.append(d)
    return out


def render(target, where, builtin_only):
    docs, gens = render_builtin(target)
    builtin = finish_builtin(docs, gens)
    cmd = None if builtin_only else kustomize_command()
    if cmd is None:
        why = "as asked" if builtin_only else "no kubectl or kustomize installed"
        return builtin, f"the built-in renderer ({why})"
    tool = render_with_tool(cmd, target)
    if normalize(tool) != normalize(builtin):
        a = json.dumps(normalize(tool), indent=1, sort_keys=True).splitlines()
        b = json.dumps(normalize(builtin), indent=1, sort_keys=True).splitlines()
        import difflib

        diff = "\n".join(list(difflib.unified_diff(a, b, "kustomize", "built-in", lineterm=""))[:60])
        raise Failure(f"{where}: the built-in renderer disagrees with {' '.join(cmd)}:\n{diff}")
    return tool, f"{' '.join(cmd)} (built-in renderer agrees)"


def normalize(docs):
    """Docs keyed by kind/name with generated ConfigMap hash suffixes stripped (the two
    renderers hash differently), in a stable order."""
    generated = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}

    def strip(name):
        return name.rsplit("-", 1)[0] if name in generated else name

    out = {}
    for d in copy.deepcopy(docs):
        d["metadata"]["name"] = strip(d["metadata"]["name"])
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    ef["configMapRef"]["name"] = strip(ef["configMapRef"]["name"])
        out[f"{d['kind']}/{d['metadata']['name']}"] = d
    return out


# ---------------------------------------------------------------- schema validation


def schema_validate(docs, versions, where):
    import kubernetes_validate

    failures = 0
    for version in versions:
        before = failures
        for d in docs:
            kn = f"{d['kind']}/{d['metadata']['name']}"
            try:
                got = kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                print(f"FAIL {where}: {kn} against Kubernetes {version}: {path}: {e.message}")
                failures += 1
                continue
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"FAIL {where}: {kn}: no schema for Kubernetes {version}: {e}")
                failures += 1
                continue
            if got != version:
                print(f"FAIL {where}: {kn}: asked for Kubernetes {version}, validated against {got}")
                failures += 1
        if failures == before:
            print(f"ok   {where}: {len(docs)} resources valid for Kubernetes {version} (strict)")
    return failures


def schema_guard(version):
    """The validation must be able to fail: a misspelled field has to be rejected."""
    import kubernetes_validate

    bad = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "serviceName": "x", "template": {"spec": {"containers": [{"name": "x", "imagee": "x"}]}}},
    }
    try:
        kubernetes_validate.validate(bad, version, strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise Failure(f"kubernetes-validate accepted a misspelled field for {version}: validation is not working")


# ---------------------------------------------------------------- nacosd checks


def one(docs, kind, where):
    hit = [d for d in docs if d["kind"] == kind]
    if len(hit) != 1:
        raise Failure(f"{where}: expected one {kind}, found {len(hit)}")
    return hit[0]


def check_nacosd(docs, where):
    sts = one(docs, "StatefulSet", where)
    cm = one(docs, "ConfigMap", where)
    pdb = one(docs, "PodDisruptionBudget", where)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    problems = []

    def need(cond, msg):
        if not cond:
            problems.append(msg)

    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    size = int(cm["data"]["NACOSD_CLUSTER_SIZE"])
    need(spec["replicas"] == size, f"replicas {spec['replicas']} != NACOSD_CLUSTER_SIZE {size}")
    need(any(ef.get("configMapRef", {}).get("name") == cm["metadata"]["name"] for ef in c.get("envFrom", [])),
         "container does not load the generated ConfigMap")
    headless = services.get(spec["serviceName"])
    need(headless is not None and headless["spec"].get("clusterIP") == "None", "serviceName is not a headless Service")
    need(headless is not None and headless["spec"].get("publishNotReadyAddresses") is True,
         "headless Service must publish not-ready addresses (peers meet before they are ready)")
    need("nacosd" in services, "no client Service")
    need(pdb["spec"].get("maxUnavailable") == 1, "PodDisruptionBudget maxUnavailable is not 1")

    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001, "pod not run as uid 10001 non-root")
    need(psc.get("fsGroup") == 10001, "no fsGroup 10001 for the volume")
    need(csc.get("readOnlyRootFilesystem") is True, "root filesystem not read-only")
    need(csc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    need(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not dropped")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    need({"/data", "/tmp"} <= mounts, f"need volumes at /data and /tmp, have {sorted(mounts)}")
    need(pod.get("terminationGracePeriodSeconds", 30) >= 30, "terminationGracePeriodSeconds < 30")

    def probe_path(name):
        return c.get(name, {}).get("httpGet", {}).get("path")

    need(probe_path("readinessProbe") == "/readyz", "readiness probe is not /readyz")
    need(probe_path("livenessProbe") == "/healthz", "liveness probe is not /healthz")
    sp = c.get("startupProbe", {})
    need(sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 120,
         "startup probe allows less than 2 minutes to open storage")
    res = c.get("resources", {})
    need("memory" in res.get("requests", {}) and "memory" in res.get("limits", {}), "no memory request and limit")
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    need(bool(anti.get("preferredDuringSchedulingIgnoredDuringExecution")), "no preferred pod anti-affinity")

    if problems:
        raise Failure(f"{where}: " + "; ".join(problems))
    print(f"ok   {where}: nacosd checks (replicas = cluster size = {size}, hardening, probes, PDB)")
    return sts, cm


def check_startup_script(sts, cm, where, namespace="prod"):
    """Run the container's bash script per ordinal with a stand-in nacosd."""
    c = sts["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"]
    if cmd[:2] != ["bash", "-c"] or len(cmd) != 3:
        raise Failure(f"{where}: container command is not `bash -c SCRIPT`")
    env_static = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    size = int(cm["data"]["NACOSD_CLUSTER_SIZE"])
    domain = f"nacosd-headless.{namespace}.svc.{cm['data']['NACOSD_CLUSTER_DOMAIN']}"
    want_members = ",".join(f"{i + 1}=nacosd-{i}.{domain}:7848" for i in range(size))
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "nacosd"
        stub.write_text('#!/bin/sh\nenv | grep "^NACOSD_"\n')
        stub.chmod(0o755)
        for ordinal in range(size + 1):
            env = {"PATH": f"{tmp}:{os.environ['PATH']}", "HOSTNAME": f"nacosd-{ordinal}", "POD_NAMESPACE": namespace}
            env.update(cm["data"])
            env.update(env_static)
            out = subprocess.run(["bash", "-c", cmd[2]], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise Failure(f"{where}: start-up script failed for nacosd-{ordinal}: {out.stderr.strip()}")
            got = dict(line.split("=", 1) for line in out.stdout.splitlines())
            want = {
                "NACOSD_NODE_ID": str(ordinal + 1),
                "NACOSD_ADVERTISE_PEER": f"nacosd-{ordinal}.{domain}:7848",
                "NACOSD_DATA_DIR": "/data",
            }
            if ordinal < size:
                want["NACOSD_INITIAL_MEMBERS"] = want_members
            else:
                # Scaled up beyond the initial members: join through pod 0.
                want["NACOSD_JOIN"] = f"nacosd-0.{domain}:7848"
                if "NACOSD_INITIAL_MEMBERS" in got:
                    raise Failure(f"{where}: nacosd-{ordinal} beyond the cluster size got initial members")
            wrong = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
            if wrong:
                raise Failure(f"{where}: nacosd-{ordinal} derives {wrong}, want { {k: want[k] for k in wrong} }")
    print(f"ok   {where}: start-up script derives node ids 1..{size}, DNS peers and members; "
          f"ordinal {size} joins through pod 0")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default=DEFAULT_VERSIONS, help=f"Kubernetes versions [{DEFAULT_VERSIONS}]")
    ap.add_argument("--builtin-renderer", action="store_true",
                    help="render with the built-in renderer even when kubectl is installed")
    args = ap.parse_args()
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        print("FAIL kubernetes-validate is not installed: pip install kubernetes-validate")
        return 1

    targets = [K8S_DIR / "base"] + sorted(p for p in (K8S_DIR / "overlays").iterdir() if p.is_dir())
    failures = 0
    try:
        for v in versions:
            schema_guard(v)
    except Exception as e:  # noqa: BLE001 - any error here means validation cannot be trusted
        print(f"FAIL {e}")
        return 1
    for target in targets:
        where = str(target.relative_to(K8S_DIR.parent.parent))
        try:
            docs, how = render(target, where, args.builtin_renderer)
            print(f"ok   {where}: rendered {len(docs)} resources with {how}")
            failures += schema_validate(docs, versions, where)
            sts, cm = check_nacosd(docs, where)
            check_startup_script(sts, cm, where)
        except Failure as e:
            print(f"FAIL {e}")
            failures += 1
    total = len(targets)
    print(f"{'FAILED' if failures else 'passed'}: {total} kustomizations, Kubernetes {', '.join(versions)}, "
          f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
