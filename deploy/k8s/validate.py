#!/usr/bin/env python3
"""Validate nacosd's Kubernetes manifests; exit non-zero on any failure.

For deploy/k8s/base and every deploy/k8s/overlays/*:

1. Render it: `kubectl kustomize` (or `kustomize build`) when one is installed, else a
   small built-in renderer for the subset of kustomize these manifests use. When
   kubectl is there, both renderings are compared, so the built-in one is checked too.
2. Validate every rendered resource against the Kubernetes OpenAPI schemas, in strict
   mode (unknown fields are errors), for each version in --versions
   (kubernetes-validate; `pip install kubernetes-validate`). cert-manager's Issuer
   and Certificate (custom resources, which kubernetes-validate has no schema for)
   are checked against the subset of cert-manager.io/v1's schema written below,
   strictly too.
3. Check what nacosd needs and a schema cannot know: replicas equal the cluster size
   the pods derive their member list from, the hardening (non-root, read-only root
   filesystem, no capabilities), probes on the right paths, a writable /tmp, the PDB.
4. With TLS on (the tls overlay): every certificate, key and password file nacosd
   is given lies in a Secret mounted as a whole directory (a subPath mount would
   never see a renewed certificate) and not readable by others; each Secret is issued
   by a Certificate in the rendering or named as one to create; the peer
   certificate comes from a namespaced Issuer (never a cluster-wide one), allows
   server and client authentication and names every pod's advertised peer address;
   the probes use HTTPS when the HTTP port does; no plaintext peer port.
5. Run the pods' start-up script with bash for every ordinal, with a stand-in
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

# The part of cert-manager.io/v1's CRD schemas (cert-manager 1.15) that an Issuer or a
# Certificate here may use; anything else is an error, as in strict mode.
_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": {"type": "object"}, "annotations": {"type": "object"}},
}
_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
]
CERT_MANAGER_SCHEMAS = {
    "Issuer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"crlDistributionPoints": _STRS},
                    },
                    "ca": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["secretName"],
                        "properties": {
                            "secretName": _STR,
                            "crlDistributionPoints": _STRS,
                            "issuingCertificateURLs": _STRS,
                            "ocspServers": _STRS,
                        },
                    },
                    "acme": {"type": "object"},
                    "vault": {"type": "object"},
                    "venafi": {"type": "object"},
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secretName", "issuerRef"],
                "properties": {
                    "secretName": _STR,
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": _STRS,
                    "ipAddresses": _STRS,
                    "uris": _STRS,
                    "emailAddresses": _STRS,
                    "isCA": {"type": "boolean"},
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "revisionHistoryLimit": {"type": "integer", "minimum": 1},
                    "usages": {"type": "array", "items": {"enum": _USAGES}},
                    "subject": {"type": "object"},
                    "secretTemplate": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"labels": {"type": "object"}, "annotations": {"type": "object"}},
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                            "size": {"type": "integer"},
                        },
                    },
                    "issuerRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR},
                    },
                },
            },
        },
    },
}


def cert_manager_validate(d):
    """Errors of a cert-manager resource against CERT_MANAGER_SCHEMAS, as text."""
    import jsonschema

    schema = CERT_MANAGER_SCHEMAS.get(d["kind"])
    if schema is None:
        return [f"no schema for cert-manager kind {d['kind']}"]
    errors = jsonschema.Draft7Validator(schema).iter_errors(d)
    return [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors]


def schema_validate(docs, versions, where):
    import kubernetes_validate

    failures = 0
    custom = [d for d in docs if d.get("apiVersion", "").startswith("cert-manager.io/")]
    for d in custom:
        kn = f"{d['kind']}/{d['metadata']['name']}"
        for e in cert_manager_validate(d):
            print(f"FAIL {where}: {kn} against cert-manager.io/v1: {e}")
            failures += 1
    if custom and not failures:
        print(f"ok   {where}: {len(custom)} cert-manager resources valid (strict)")
    docs = [d for d in docs if d not in custom]
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


def cert_manager_guard():
    """The cert-manager checks must be able to fail too."""
    bad = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "x"},
        "spec": {"secretName": "x", "issuerRef": {"name": "x"}, "dnsName": ["x"]},
    }
    if not cert_manager_validate(bad):
        raise Failure("the cert-manager schema accepted a misspelled field: validation is not working")


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


def _wildcard_match(pattern, host):
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def check_security(docs, sts, cm, where, namespace="default"):
    """With TLS on: secrets mounted for rotation, certificates that fit (see the
    module's docstring, item 4). Without it: only that the peer port is plaintext by
    choice (NACOSD_INSECURE_PEER=true)."""
    data = cm["data"]
    if "NACOSD_PEER_CERT" not in data:
        if data.get("NACOSD_INSECURE_PEER") != "true" and int(data["NACOSD_CLUSTER_SIZE"]) > 1:
            raise Failure(f"{where}: a multi-node cluster with neither mutual TLS nor NACOSD_INSECURE_PEER=true will not start")
        print(f"ok   {where}: security off (plaintext peer port by NACOSD_INSECURE_PEER=true)")
        return
    problems = []

    def need(cond, msg):
        if not cond:
            problems.append(msg)

    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    need(data.get("NACOSD_INSECURE_PEER") != "true", "NACOSD_INSECURE_PEER=true next to mutual TLS")
    for key in ("NACOSD_PEER_KEY", "NACOSD_PEER_CA"):
        need(key in data, f"NACOSD_PEER_CERT without {key}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = c.get("volumeMounts", [])
    certificates = {d["spec"]["secretName"]: d for d in docs if d["kind"] == "Certificate"}
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    to_create = set()
    secret_of = {}
    for key, path in sorted(data.items()):
        if not key.endswith(("_CERT", "_KEY", "_CA", "_FILE")):
            continue
        mount = next((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        if mount is None:
            problems.append(f"{key}={path} is in no mounted volume")
            continue
        need("subPath" not in mount and "subPathExpr" not in mount,
             f"{key}: mounted with subPath, so a renewed certificate would never be seen")
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            problems.append(f"{key}: volume {mount['name']} is not a Secret")
            continue
        name = secret["secretName"]
        secret_of[key] = name
        mode = secret.get("defaultMode", 0o644)
        need(mode & 0o007 == 0, f"{key}: Secret {name} mounted readable by others (mode {oct(mode)})")
        if name not in certificates:
            to_create.add(name)
    for cert in certificates.values():
        ref = cert["spec"]["issuerRef"]
        need(ref.get("kind", "Issuer") == "ClusterIssuer" or ref["name"] in issuers,
             f"Certificate {cert['metadata']['name']}: issuer {ref['name']} is not in the rendering")
    peer = certificates.get(secret_of.get("NACOSD_PEER_CERT"))
    if peer is not None:
        spec = peer["spec"]
        need(spec["issuerRef"].get("kind", "Issuer") == "Issuer",
             "the peer certificate must come from nacosd's own Issuer, not a ClusterIssuer: every certificate its CA signs is a Raft member")
        need({"server auth", "client auth"} <= set(spec.get("usages", [])),
             "the peer certificate needs the usages server auth and client auth")
        domain = f"nacosd-headless.{namespace}.svc.{data['NACOSD_CLUSTER_DOMAIN']}"
        for i in range(int(data["NACOSD_CLUSTER_SIZE"]) + 1):
            host = f"nacosd-{i}.{domain}"
            need(any(_wildcard_match(n, host) for n in spec.get("dnsNames", [])),
                 f"the peer certificate does not name {host}")
    elif secret_of.get("NACOSD_PEER_CERT"):
        to_create.add(secret_of["NACOSD_PEER_CERT"])
    https = data.get("NACOSD_HTTP_TLS") == "true"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        scheme = c.get(probe, {}).get("httpGet", {}).get("scheme", "HTTP")
        need(scheme == ("HTTPS" if https else "HTTP"), f"{probe} uses {scheme} but NACOSD_HTTP_TLS is {https}")
    if problems:
        raise Failure(f"{where}: " + "; ".join(problems))
    made = sorted(set(secret_of.values()) - to_create)
    print(f"ok   {where}: security on (mutual TLS, TLS, auth={data.get('NACOSD_AUTH', 'false')}); "
          f"Secrets from cert-manager: {', '.join(made) or 'none'}; to create first: {', '.join(sorted(to_create)) or 'none'}")


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
        cert_manager_guard()
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
            check_security(docs, sts, cm, where)
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
