#!/usr/bin/env python3
"""Configure a Vault or OpenBao server for istio-vault-ca, through its HTTP API only.

What it sets up (idempotent: anything already present is kept):
  * a root PKI mount (default `pki-root`) holding an EC P-256 root CA;
  * an issuing mount (default `pki-istio`) holding an EC P-256 intermediate signed by that
    root, with the root imported beside it so `LIST <mount>/issuers` shows the trust anchor;
  * the workload role (default `istio-workload`) that the signer calls `sign/<role>` on:
    URI SANs limited to `spiffe://<trust-domain>/ns/*/sa/*`, CSR names ignored, no CN,
    server+client EKU, `no_store`, no lease, a max TTL;
  * the least-privilege policy `istio-vault-ca` (sign with that role, read it and the issuers, manage
    its own token) and, with --token-file, a periodic token holding only that policy;
  * with --serving-cert-dir, a TLS serving certificate for the signer itself (role
    `istio-vault-ca-serving`), plus `root-cert.pem`: what Istio's `istio-ca-root-cert` holds;
  * for several CAs in one mesh (docs/multiple-cas.md): with --extra-mount MOUNT[:ROOT_MOUNT],
    another issuing mount with its own intermediate under its own root (default root mount
    `MOUNT-root`), its root written as `root-cert-MOUNT.pem` beside the serving certificate;
    with --extra-role MOUNT/ROLE[=MAX_TTL], another workload role; the policy covers them all;
  * the issued-certificate ledger's KV version 2 mount (default `istio-vault-ca-ledger`,
    `--ledger-mount`; `--no-ledger` skips it), which the policy lets the signer write, read,
    list and prune (`[ledger]` in the signer's config; docs/revocation.md).

The quickstart and the integration tests run this same script against a real OpenBao.
Only the Python standard library is used, so it runs anywhere Python 3.8+ does.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

POLICY_NAME = "istio-vault-ca"


class VaultError(Exception):
    def __init__(self, method, path, status, body):
        super().__init__(f"{method} /v1/{path}: HTTP {status}: {body}")
        self.status = status


def https_opener(context, server_name):
    """An opener whose TLS connections verify the server as `server_name` instead of the host
    they connect to: Vault reached through a port-forward (127.0.0.1) keeps its certificate
    checked under its in-cluster name."""
    import http.client

    class Connection(http.client.HTTPSConnection):
        def connect(self):
            http.client.HTTPConnection.connect(self)
            self.sock = self._context.wrap_socket(self.sock, server_hostname=server_name)

    class Handler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(Connection, req, context=context)

    return urllib.request.build_opener(Handler())


class Vault:
    def __init__(self, addr, token, namespace=None, cacert=None, tls_server_name=None):
        self.addr = addr.rstrip("/")
        self.token = token
        self.namespace = namespace
        self.context = None
        if cacert or tls_server_name:
            import ssl

            self.context = ssl.create_default_context(cafile=cacert)
        self.opener = https_opener(self.context, tls_server_name) if tls_server_name else None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method)
        req.add_header("X-Vault-Token", self.token)
        req.add_header("Content-Type", "application/json")
        if self.namespace:
            req.add_header("X-Vault-Namespace", self.namespace)
        try:
            if self.opener:
                resp = self.opener.open(req, timeout=30)
            else:
                resp = urllib.request.urlopen(req, context=self.context, timeout=30)
            with resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise VaultError(method, path, e.code, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else {}

    def get_or_none(self, path, method="GET"):
        try:
            return self.call(method, path)
        except VaultError as e:
            if e.status == 404:
                return None
            raise


def ensure_mount(vault, path, max_ttl, description):
    mounts = vault.call("GET", "sys/mounts")
    mounts = mounts.get("data", mounts)
    if f"{path}/" not in mounts:
        vault.call("POST", f"sys/mounts/{path}", {"type": "pki", "description": description})
        log(f"enabled PKI mount {path}/")
    vault.call("POST", f"sys/mounts/{path}/tune", {"max_lease_ttl": max_ttl})


def ensure_kv_mount(vault, path, description):
    mounts = vault.call("GET", "sys/mounts")
    mounts = mounts.get("data", mounts)
    if f"{path}/" not in mounts:
        vault.call("POST", f"sys/mounts/{path}",
                   {"type": "kv", "options": {"version": "2"}, "description": description})
        log(f"enabled KV v2 mount {path}/")


def has_default_issuer(vault, mount):
    return bool(vault.call("GET", f"{mount}/config/issuers")["data"].get("default"))


def ensure_root(vault, mount, common_name):
    if has_default_issuer(vault, mount):
        return vault.call("GET", f"{mount}/issuer/default/json")["data"]["certificate"].strip()
    resp = vault.call(
        "POST",
        f"{mount}/root/generate/internal",
        {
            "common_name": common_name,
            "key_type": "ec",
            "key_bits": 256,
            "ttl": "87600h",
            "issuer_name": "root",
        },
    )
    log(f"generated EC P-256 root in {mount}/")
    return resp["data"]["certificate"].strip()


def ensure_intermediate(vault, root_mount, mount, common_name, root_pem):
    if has_default_issuer(vault, mount):
        return
    csr = vault.call(
        "POST",
        f"{mount}/intermediate/generate/internal",
        {"common_name": common_name, "key_type": "ec", "key_bits": 256},
    )["data"]["csr"]
    signed = vault.call(
        "POST",
        f"{root_mount}/root/sign-intermediate",
        {"csr": csr, "format": "pem", "ttl": "43800h", "common_name": common_name},
    )["data"]["certificate"]
    # Importing the root beside the intermediate lets the signer read every trust anchor
    # from this one mount (`LIST issuers`), including during a root rotation.
    imported = vault.call(
        "POST", f"{mount}/intermediate/set-signed", {"certificate": signed + "\n" + root_pem}
    )["data"]
    vault.call("POST", f"{mount}/config/issuers", {"default": imported["imported_issuers"][0]})
    log(f"installed EC P-256 intermediate in {mount}/ signed by {root_mount}/")


def seconds(duration):
    """Vault duration text (`48h`, `90m`, `3600s`, `3600`) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if duration[-1:] in units:
        return int(duration[:-1]) * units[duration[-1]]
    return int(duration)


def workload_role(trust_domain, max_ttl):
    # The signer always asks for a TTL; the role's default only has to fit under its max.
    ttl = "24h" if seconds(max_ttl) >= 86400 else max_ttl
    return {
        "key_type": "any",
        "allowed_uri_sans": [f"spiffe://{trust_domain}/ns/*/sa/*"],
        "allowed_domains": [],
        "allow_any_name": False,
        "allow_localhost": False,
        "allow_ip_sans": False,
        "allow_bare_domains": False,
        "allow_subdomains": False,
        "enforce_hostnames": False,
        "require_cn": False,
        "use_csr_common_name": False,
        "use_csr_sans": False,
        "server_flag": True,
        "client_flag": True,
        "key_usage": ["DigitalSignature", "KeyEncipherment"],
        "basic_constraints_valid_for_non_ca": False,
        "no_store": True,
        "generate_lease": False,
        "ttl": ttl,
        "max_ttl": max_ttl,
        "not_before_duration": "30s",
        # OpenBao: refuse `not_after` outright (Vault ignores the unknown field with a warning).
        "not_after_bound": "forbid",
    }


def serving_role(names):
    """Exactly the configured names: no subdomains, wildcards or globs, `localhost` only if
    listed, and IP SANs only for the listed addresses (OpenBao's `allowed_ip_sans_cidr`; Vault,
    which lacks it, ignores the field with a warning and allows IP SANs only if any is listed)."""
    dns = [n for n in names if not is_ip(n)]
    ips = [n for n in names if is_ip(n)]
    return {
        "key_type": "ec",
        "key_bits": 256,
        "allowed_domains": [n for n in dns if n != "localhost"],
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allow_wildcard_certificates": False,
        "allow_any_name": False,
        "allow_localhost": "localhost" in dns,
        "allow_ip_sans": bool(ips),
        "allowed_ip_sans_cidr": [f"{ip}/{32 if ':' not in ip else 128}" for ip in ips],
        "require_cn": False,
        "server_flag": True,
        "client_flag": False,
        "no_store": True,
        "ttl": "720h",
        "max_ttl": "720h",
    }


def is_ip(name):
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def policy(mount, role, serving_role=None, extra_roles=(), extra_mounts=(), ledger_mount=None):
    """Sign with the workload roles (and the serving role, if given); read the issuers of
    every mount signed with; keep the ledger, if given."""
    signs = [(mount, role)] + ([(mount, serving_role)] if serving_role else []) + list(extra_roles)
    mounts = list(dict.fromkeys([mount] + list(extra_mounts) + [m for m, _ in extra_roles]))
    text = "# istio-vault-ca: sign workload CSRs with its roles and read the trust anchors.\n"
    for m, r in signs:
        text += f"""path "{m}/sign/{r}" {{
  capabilities = ["create", "update"]
}}
"""
    # Reading a workload role tells the signer whether standbys of an HA cluster sign it
    # themselves (no_store, no lease), so it can spread signs over every node.
    for m, r in [(mount, role)] + list(extra_roles):
        text += f"""path "{m}/roles/{r}" {{
  capabilities = ["read"]
}}
"""
    for m in mounts:
        # `istio-vault-ca revoke` revokes a no_store certificate by its PEM from the ledger.
        text += f"""path "{m}/revoke" {{
  capabilities = ["update"]
}}
path "{m}/crl/rotate" {{
  capabilities = ["read"]
}}
"""
    for m in mounts:
        text += f"""path "{m}/issuers" {{
  capabilities = ["list"]
}}
path "{m}/issuer/+/json" {{
  capabilities = ["read"]
}}
path "{m}/issuer/+/crl" {{
  capabilities = ["read"]
}}
"""
    if ledger_mount:
        text += f"""# The issued-certificate ledger: batches written, read back, listed and pruned.
path "{ledger_mount}/data/*" {{
  capabilities = ["create", "update", "read"]
}}
path "{ledger_mount}/metadata/*" {{
  capabilities = ["list", "delete"]
}}
"""
    return text + """path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
"""


def ensure_kubernetes_auth(vault, args):
    """auth/kubernetes with a role that maps the signer's service account to the policy."""
    auths = vault.call("GET", "sys/auth")
    auths = auths.get("data", auths)
    if "kubernetes/" not in auths:
        vault.call("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        log("enabled auth/kubernetes")
    existing = vault.get_or_none("auth/kubernetes/config")
    if existing and existing.get("data", {}).get("kubernetes_host") and not args.kubernetes_overwrite_config:
        # Another team (or an earlier run with other options) configured this auth mount: its
        # settings are not ours to replace.
        log(f"auth/kubernetes/config exists (kubernetes_host={existing['data']['kubernetes_host']}); "
            "left as it is (--kubernetes-overwrite-config replaces it)")
        config = None
    else:
        config = {"kubernetes_host": args.kubernetes_host}
    if config is not None and args.kubernetes_ca_file:
        # Vault outside the cluster: the API server's CA is given, and each login's own JWT
        # is used for the TokenReview (the signer's SA then needs system:auth-delegator).
        with open(args.kubernetes_ca_file) as f:
            config["kubernetes_ca_cert"] = f.read()
        config["disable_local_ca_jwt"] = True
    if config is not None:
        vault.call("POST", "auth/kubernetes/config", config)
    vault.call(
        "POST",
        "auth/kubernetes/role/istio-vault-ca",
        {
            "bound_service_account_names": [args.signer_service_account],
            "bound_service_account_namespaces": [args.signer_namespace],
            # Only a token minted for Vault logs in (the Deployment projects one with this
            # audience), not the pod's API-server token.
            "audience": args.kubernetes_audience,
            "token_policies": [POLICY_NAME],
            "token_no_default_policy": True,
            "token_period": "1h",
        },
    )
    log(f"auth/kubernetes/role/istio-vault-ca: {args.signer_namespace}/{args.signer_service_account} "
        f"(audience {args.kubernetes_audience}) -> {POLICY_NAME}")


def ensure_cert_auth(vault, args):
    """auth/cert with a role that maps client certificates issued by --cert-auth's CA (and,
    with --cert-auth-names, only those common names/DNS SANs) to the policy."""
    auths = vault.call("GET", "sys/auth")
    auths = auths.get("data", auths)
    if "cert/" not in auths:
        vault.call("POST", "sys/auth/cert", {"type": "cert"})
        log("enabled auth/cert")
    with open(args.cert_auth) as f:
        ca = f.read()
    role = {
        "certificate": ca,
        "token_policies": [POLICY_NAME],
        "token_no_default_policy": True,
        "token_period": "1h",
    }
    if args.cert_auth_names:
        role["allowed_common_names"] = args.cert_auth_names
    vault.call("POST", "auth/cert/certs/istio-vault-ca", role)
    log(f"auth/cert/certs/istio-vault-ca: client certificates from {args.cert_auth}"
        + (f" named {args.cert_auth_names}" if args.cert_auth_names else "") + f" -> {POLICY_NAME}")


def write_private(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def log(msg):
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or "setup"
    print(f"{name}: {msg}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", default=os.environ.get("BAO_ADDR", os.environ.get("VAULT_ADDR", "http://127.0.0.1:8200")))
    p.add_argument("--token", default=os.environ.get("BAO_TOKEN", os.environ.get("VAULT_TOKEN")),
                   help="an admin token (default: $BAO_TOKEN or $VAULT_TOKEN); prefer the environment "
                        "or --admin-token-file, which other users cannot read from the process list")
    p.add_argument("--admin-token-file", help="read the admin token from this file")
    p.add_argument("--namespace", default=os.environ.get("VAULT_NAMESPACE"))
    p.add_argument("--cacert", default=os.environ.get("VAULT_CACERT"))
    p.add_argument("--tls-server-name", default=os.environ.get("VAULT_TLS_SERVER_NAME"),
                   help="verify Vault's certificate for this name instead of --addr's host "
                        "(Vault reached through kubectl port-forward)")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--root-mount", default="pki-root")
    p.add_argument("--mount", default="pki-istio")
    p.add_argument("--role", default="istio-workload")
    p.add_argument("--max-ttl", default="48h", help="role max TTL for workload leaves")
    p.add_argument("--token-file", help="create a periodic signer token and write it here (mode 0600)")
    p.add_argument("--token-period", default="24h")
    p.add_argument("--serving-cert-dir", help="issue the signer's TLS certificate into this directory")
    p.add_argument("--serving-names", default="localhost,127.0.0.1",
                   help="comma-separated DNS names / IPs for the serving certificate")
    p.add_argument("--kubernetes-auth", action="store_true",
                   help="enable Kubernetes auth so the signer's pod logs in as its service account")
    p.add_argument("--kubernetes-host", default="https://kubernetes.default.svc:443",
                   help="API server address Vault uses for TokenReview")
    p.add_argument("--kubernetes-ca-file", help="PEM CA of the API server (default: Vault's own, when in-cluster)")
    p.add_argument("--kubernetes-audience", default="vault",
                   help="audience the signer's login token must carry (the Deployment's projected token)")
    p.add_argument("--kubernetes-overwrite-config", action="store_true",
                   help="replace an existing auth/kubernetes/config (default: leave it)")
    p.add_argument("--signer-namespace", default="istio-system")
    p.add_argument("--signer-service-account", default="istio-vault-ca")
    p.add_argument("--extra-mount", action="append", default=[], metavar="MOUNT[:ROOT_MOUNT]",
                   help="another issuing mount, its intermediate under ROOT_MOUNT's root (default: its "
                        "own root mount MOUNT-root); repeatable")
    p.add_argument("--extra-role", action="append", default=[], metavar="MOUNT/ROLE[=MAX_TTL]",
                   help="another workload role the signer may sign with (default max TTL: --max-ttl); "
                        "repeatable")
    p.add_argument("--istiod-names", metavar="NAMES",
                   help="comma-separated DNS names of istiod: creates the role istiod-serving for them "
                        "and lets the signer sign with it ([istiod_certificate])")
    p.add_argument("--cert-auth", metavar="CA_FILE",
                   help="enable auth/cert with role istio-vault-ca for client certificates issued by this CA "
                        "(the signer's vault.auth.method = \"cert\"; Vault must serve TLS)")
    p.add_argument("--cert-auth-names", metavar="NAMES",
                   help="with --cert-auth: only client certificates with these common names (comma-separated)")
    p.add_argument("--ledger-mount", default="istio-vault-ca-ledger",
                   help="KV v2 mount of the issued-certificate ledger (the signer's [ledger].mount)")
    p.add_argument("--no-ledger", action="store_true", help="do not enable the ledger's mount")
    p.add_argument("--self-issued-serving", action="store_true",
                   help="let the signer's token sign its own serving certificate (server.self_issued)")
    args = p.parse_args()
    if args.admin_token_file:
        with open(args.admin_token_file) as f:
            args.token = f.read().strip()
    if not args.token:
        p.error("an admin token is required ($BAO_TOKEN, $VAULT_TOKEN, --admin-token-file or --token)")

    vault = Vault(args.addr, args.token, args.namespace, args.cacert, args.tls_server_name)
    ensure_mount(vault, args.root_mount, "87600h", "istio-vault-ca root CA")
    ensure_mount(vault, args.mount, "43800h", "istio-vault-ca issuing CA")
    root_pem = ensure_root(vault, args.root_mount, f"{args.trust_domain} root CA")
    ensure_intermediate(vault, args.root_mount, args.mount, f"{args.trust_domain} intermediate CA", root_pem)
    vault.call("POST", f"{args.mount}/roles/{args.role}", workload_role(args.trust_domain, args.max_ttl))
    log(f"role {args.mount}/roles/{args.role} allows spiffe://{args.trust_domain}/ns/*/sa/*, max TTL {args.max_ttl}")
    extra_roots = {}
    for spec in args.extra_mount:
        mount, _, root_mount = spec.partition(":")
        root_mount = root_mount or f"{mount}-root"
        ensure_mount(vault, root_mount, "87600h", f"istio-vault-ca root CA for {mount}")
        ensure_mount(vault, mount, "43800h", "istio-vault-ca issuing CA")
        extra_root = ensure_root(vault, root_mount, f"{args.trust_domain} {mount} root CA")
        ensure_intermediate(vault, root_mount, mount, f"{args.trust_domain} {mount} intermediate CA", extra_root)
        extra_roots[mount] = extra_root
    extra_roles = []
    for spec in args.extra_role:
        path, _, max_ttl = spec.partition("=")
        mount, sep, role = path.partition("/")
        if not sep or not mount or not role:
            p.error(f"--extra-role {spec!r}: expected MOUNT/ROLE[=MAX_TTL]")
        max_ttl = max_ttl or args.max_ttl
        vault.call("POST", f"{mount}/roles/{role}", workload_role(args.trust_domain, max_ttl))
        log(f"role {mount}/roles/{role} allows spiffe://{args.trust_domain}/ns/*/sa/*, max TTL {max_ttl}")
        extra_roles.append((mount, role))
    serving_role_name = "istio-vault-ca-serving"
    names = [n.strip() for n in args.serving_names.split(",") if n.strip()]
    if args.serving_cert_dir or args.self_issued_serving:
        vault.call("POST", f"{args.mount}/roles/{serving_role_name}", serving_role(names))
        log(f"serving role {args.mount}/roles/{serving_role_name} allows {names}")
    signer_serving = serving_role_name if args.self_issued_serving else None
    if args.istiod_names:
        istiod_names = [n.strip() for n in args.istiod_names.split(",") if n.strip()]
        vault.call("POST", f"{args.mount}/roles/istiod-serving", serving_role(istiod_names))
        log(f"istiod role {args.mount}/roles/istiod-serving allows {istiod_names}")
        extra_roles.append((args.mount, "istiod-serving"))
    ledger_mount = None if args.no_ledger else args.ledger_mount
    if ledger_mount:
        ensure_kv_mount(vault, ledger_mount, "istio-vault-ca issued-certificate ledger")
    vault.call("PUT", f"sys/policies/acl/{POLICY_NAME}",
               {"policy": policy(args.mount, args.role, signer_serving, extra_roles, extra_roots,
                                 ledger_mount)})
    log(f"policy {POLICY_NAME} written" + (" (may sign its own serving certificate)" if signer_serving else ""))

    if args.kubernetes_auth:
        ensure_kubernetes_auth(vault, args)
    if args.cert_auth:
        ensure_cert_auth(vault, args)

    if args.token_file:
        tok = vault.call(
            "POST",
            "auth/token/create",
            {"policies": [POLICY_NAME], "period": args.token_period, "no_default_policy": True,
             "display_name": "istio-vault-ca", "renewable": True},
        )["auth"]["client_token"]
        write_private(args.token_file, tok)
        log(f"signer token (policy {POLICY_NAME}, period {args.token_period}) written to {args.token_file}")

    if args.serving_cert_dir:
        role = serving_role_name
        dns = [n for n in names if not is_ip(n)]
        ips = [n for n in names if is_ip(n)]
        req = {"common_name": dns[0] if dns else "", "alt_names": ",".join(dns[1:]), "ip_sans": ",".join(ips), "ttl": "720h"}
        data = vault.call("POST", f"{args.mount}/issue/{role}", req)["data"]
        os.makedirs(args.serving_cert_dir, exist_ok=True)
        chain = [data["certificate"]] + [c for c in data.get("ca_chain", []) if c.strip() != root_pem.strip()]
        with open(os.path.join(args.serving_cert_dir, "tls.crt"), "w") as f:
            f.write("\n".join(chain) + "\n")
        write_private(os.path.join(args.serving_cert_dir, "tls.key"), data["private_key"] + "\n")
        with open(os.path.join(args.serving_cert_dir, "root-cert.pem"), "w") as f:
            f.write(root_pem + "\n")
        for mount, pem in extra_roots.items():
            with open(os.path.join(args.serving_cert_dir, f"root-cert-{mount}.pem"), "w") as f:
                f.write(pem + "\n")
        log(f"serving certificate for {names} written to {args.serving_cert_dir}/tls.crt")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VaultError as e:
        print(f"setup: error: {e}", file=sys.stderr)
        sys.exit(1)
    except urllib.error.URLError as e:
        print(f"setup: cannot reach Vault: {e.reason}", file=sys.stderr)
        sys.exit(1)
