#!/usr/bin/env python3
"""Zero-downtime root rotation for istio-vault-ca, in three steps (docs/root-rotation.md).

  prepare --name N   new EC P-256 root `root-N` in the root mount and a new intermediate
                     `intermediate-N` in the issuing mount, signed by it; `root-N` is imported
                     beside it. The signer's trust bundle (every self-signed issuer of the
                     issuing mount) now holds the old AND the new root; workloads learn both
                     from the last element of every response. Nothing is issued by N yet.
  switch --name N    make `intermediate-N` the default issuer: new leaves chain to `root-N`.
                     Wait at least one workload certificate lifetime (and until
                     istio-ca-root-cert carries root-N everywhere) before retiring.
  retire --name N    delete every other issuer from the issuing mount: the bundle holds only
                     `root-N`. Leaves from the old chain stop verifying; by now they have
                     all been renewed.

Uses the same admin token and flags as setup.py. Idempotent per step.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from setup import Vault, VaultError, log  # noqa: E402


def issuers(vault, mount):
    try:
        listed = vault.call("LIST", f"{mount}/issuers")["data"]
    except VaultError as e:
        if e.status == 404:
            return {}
        raise
    return {i: info for i, info in listed.get("key_info", {}).items()}


def find(vault, mount, name):
    for issuer_id, info in issuers(vault, mount).items():
        if info.get("issuer_name") == name:
            return issuer_id
    return None


def prepare(vault, args):
    root_name, inter_name = f"root-{args.name}", f"intermediate-{args.name}"
    if find(vault, args.mount, inter_name):
        log(f"{inter_name} already exists in {args.mount}/")
        return
    root = vault.call("GET", f"{args.root_mount}/issuer/{root_name}/json") if find(vault, args.root_mount, root_name) else None
    if root is None:
        root = vault.call(
            "POST",
            f"{args.root_mount}/root/generate/internal",
            {"common_name": f"{args.trust_domain} root CA {args.name}", "key_type": "ec",
             "key_bits": 256, "ttl": "87600h", "issuer_name": root_name},
        )
        log(f"generated {root_name} in {args.root_mount}/")
    root_pem = root["data"]["certificate"].strip()
    csr = vault.call(
        "POST",
        f"{args.mount}/intermediate/generate/internal",
        {"common_name": f"{args.trust_domain} intermediate CA {args.name}", "key_type": "ec", "key_bits": 256},
    )["data"]["csr"]
    signed = vault.call(
        "POST",
        f"{args.root_mount}/issuer/{root_name}/sign-intermediate",
        {"csr": csr, "format": "pem", "ttl": "43800h",
         "common_name": f"{args.trust_domain} intermediate CA {args.name}"},
    )["data"]["certificate"]
    before = set(issuers(vault, args.mount))
    vault.call("POST", f"{args.mount}/intermediate/set-signed", {"certificate": signed + "\n" + root_pem})
    for issuer_id in set(issuers(vault, args.mount)) - before:
        cert = vault.call("GET", f"{args.mount}/issuer/{issuer_id}/json")["data"]["certificate"]
        name = root_name if cert.strip() == root_pem else inter_name
        vault.call("POST", f"{args.mount}/issuer/{issuer_id}", {"issuer_name": name})
    log(f"prepared: {args.mount}/ holds {inter_name} and {root_name}; the bundle now carries old and new roots")


def switch(vault, args):
    inter_name = f"intermediate-{args.name}"
    issuer_id = find(vault, args.mount, inter_name)
    if issuer_id is None:
        sys.exit(f"rotate-root: {inter_name} not found; run prepare first")
    vault.call("POST", f"{args.mount}/config/issuers", {"default": issuer_id})
    log(f"switched: new leaves from {args.mount}/ are issued by {inter_name}")


def retire(vault, args):
    keep = {f"root-{args.name}", f"intermediate-{args.name}"}
    current = issuers(vault, args.mount)
    if not any(info.get("issuer_name") in keep for info in current.values()):
        sys.exit(f"rotate-root: no issuer named *-{args.name}; refusing to delete everything")
    default = vault.call("GET", f"{args.mount}/config/issuers")["data"]["default"]
    if current.get(default, {}).get("issuer_name") != f"intermediate-{args.name}":
        sys.exit("rotate-root: switch to the new intermediate before retiring the old chain")
    for issuer_id, info in current.items():
        if info.get("issuer_name") not in keep:
            vault.call("DELETE", f"{args.mount}/issuer/{issuer_id}")
            log(f"retired issuer {issuer_id} ({info.get('issuer_name') or 'unnamed'}) from {args.mount}/")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["prepare", "switch", "retire"])
    p.add_argument("--name", required=True, help="generation label, e.g. 2027")
    p.add_argument("--addr", default=os.environ.get("BAO_ADDR", os.environ.get("VAULT_ADDR", "http://127.0.0.1:8200")))
    p.add_argument("--token", default=os.environ.get("BAO_TOKEN", os.environ.get("VAULT_TOKEN")))
    p.add_argument("--namespace", default=os.environ.get("VAULT_NAMESPACE"))
    p.add_argument("--cacert", default=os.environ.get("VAULT_CACERT"))
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--root-mount", default="pki-root")
    p.add_argument("--mount", default="pki-istio")
    args = p.parse_args()
    if not args.token:
        p.error("an admin token is required (--token, $BAO_TOKEN or $VAULT_TOKEN)")
    vault = Vault(args.addr, args.token, args.namespace, args.cacert)
    {"prepare": prepare, "switch": switch, "retire": retire}[args.step](vault, args)


if __name__ == "__main__":
    try:
        main()
    except VaultError as e:
        print(f"rotate-root: error: {e}", file=sys.stderr)
        sys.exit(1)
