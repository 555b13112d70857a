#!/usr/bin/env python3
"""nft-example: a switchyard dataplane plugin in Python (standard library only).

It speaks switchyard's plugin protocol v1 (newline-delimited JSON on stdin and
stdout; see docs/plugins.md and backend-plugin/schema/) and routes ClusterIP,
NodePort, externalIPs and load-balancer IPs (IPv4, TCP and UDP) with nftables,
in its own table `ip switchyard_example`. Everything Kubernetes decides —
which endpoints each frontend reaches for which source, reject or drop,
masquerade — arrives precomputed in the plans; this program only renders.

  switchyard --proxy-mode plugin --plugin-command "python3 examples/plugins/nft-example/plugin.py" ...

The table, rebuilt atomically (one `nft -f` transaction) at every barrier:

  nat-prerouting  (nat, prerouting, dstnat)  pod sources -> dispatch-pod, others -> dispatch-external
  nat-output      (nat, output, dstnat)      -> dispatch-node (the node's own connections)
  dispatch-CLASS  one rule per frontend whose route forwards: `ip daddr A tcp dport P goto fN-CLASS`
                  (node ports: `fib daddr type local ...`); the rule comment names the frontend
  fN-CLASS        [mark for masquerade] goto rN-ROUTE
  rN-ROUTE        numgen random mod K vmap { i : goto rN-ROUTE-i }
  rN-ROUTE-i      [hairpin: mark when the source is the endpoint]; dnat to IP:PORT
  filter-*        (filter; input, forward, output) new connections still addressed to a
                  frontend (not DNATed) -> verdicts: reject (no endpoints) or drop
  nat-postrouting (nat, postrouting, srcnat) marked -> masquerade

`inspect` reads that table back with `nft -j` (never from memory). `cleanup`
deletes the table. On end of input the plugin exits and leaves the rules in
place, so traffic keeps flowing while the daemon restarts.
"""
import json
import os
import subprocess
import sys

NAME = "nft-example"
VERSION = "1.0.0"
TABLE = "switchyard_example"
MARK = 0x4000
# What this plugin implements; the conformance suite reports scenarios that
# need anything else as unsupported.
CAPABILITIES = [
    "Tcp", "Udp", "IPv4",
    "ClusterIP", "NodePort", "ExternalIPs", "LoadBalancerIPs",
    "Reject", "Masquerade", "Hairpin", "HostNetworkClients",
    "ExternalTrafficPolicyLocal", "InternalTrafficPolicyLocal",
]
CLASSES = ("pod", "node", "external")


class PluginError(Exception):
    def __init__(self, kind, message, operation=None):
        super().__init__(message)
        self.kind, self.message, self.operation = kind, message, operation


class Nft:
    """Runs nft in the network namespace the daemon names (ours when none)."""

    def __init__(self, netns):
        self.prefix = ["nsenter", f"--net={netns}"] if netns else []

    def run(self, args, stdin=None):
        proc = subprocess.run(self.prefix + ["nft"] + args, input=stdin, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PluginError("failed", f"nft {' '.join(args)}: {proc.stderr.strip()}", operation="nft " + " ".join(args))
        return proc.stdout


# ---------------------------------------------------------------------------
# rendering


def frontend_comment(f, label):
    ip = f["ip"] or "-"
    return f'{f["kind"]} {ip} {f["port"]}/{f["protocol"]} {label}'


def render(services, context):
    """The whole table as nft text, plus warnings for what was skipped."""
    warnings = []
    chains = {}  # name -> list of rule lines
    dispatch = {c: [] for c in CLASSES}
    verdicts = []
    if context["nodeport_cidrs"] is None:
        local = "fib daddr type local ip daddr != 127.0.0.0/8"
    else:
        v4 = [c for c in context["nodeport_cidrs"] if ":" not in c]
        local = "fib daddr type local ip daddr { %s }" % ", ".join(v4) if v4 else None
    n = 0
    for key in sorted(services):
        for port in services[key]["ports"]:
            if port["family"] != "IPv4" or port["protocol"] not in ("TCP", "UDP"):
                warnings.append({"service": key, "message": f'{port["family"]} {port["protocol"]} is not supported; skipped'})
                continue
            n += 1
            proto = port["protocol"].lower()
            routes = {}
            # The core's hairpin set (older daemons send none: mark every endpoint).
            hairpin = port.get("hairpin")
            for rname, route in port["routes"].items():
                if route["verdict"] != "Forward":
                    continue
                chain = f"r{n}-{rname}"
                targets = []
                for i, ep in enumerate(route["endpoints"]):
                    ep_chain = f"{chain}-{i}"
                    addr = f'{ep["ip"]}:{ep["port"]}'
                    rules = []
                    if hairpin is None or addr in hairpin:
                        rules.append(f'ip saddr {ep["ip"]} meta mark set meta mark or {MARK:#x}')  # hairpin
                    rules.append(f'meta l4proto {proto} dnat to {addr}')
                    chains[ep_chain] = rules
                    targets.append(f"{i} : goto {ep_chain}")
                chains[chain] = ["numgen random mod %d vmap { %s }" % (len(targets), ", ".join(targets))]
                routes[rname] = chain
            for j, f in enumerate(port["frontends"]):
                comment = frontend_comment(f, port["label"])
                if f["kind"] == "NodePort":
                    if local is None:
                        continue
                    match = f'{local} {proto} dport {f["port"]}'
                else:
                    match = f'ip daddr {f["ip"]} {proto} dport {f["port"]}'
                empty = None
                for cls in CLASSES:
                    flow = f[cls]
                    route = port["routes"][flow["route"]]
                    if route["verdict"] != "Forward":
                        empty = route["verdict"]
                        continue
                    fe_chain = f"f{n}-{j}-{cls}"
                    rules = [f"meta mark set meta mark or {MARK:#x}"] if flow["masquerade"] else []
                    chains[fe_chain] = rules + [f'goto {routes[flow["route"]]}']
                    dispatch[cls].append(f'{match} goto {fe_chain} comment "{comment}"')
                if empty is not None:
                    # Connections some class may not forward arrive here un-DNATed.
                    action = "reject" if empty == "Reject" else "drop"
                    verdicts.append(f'{match} {action} comment "{comment}"')
    cidrs = [c for c in context["masquerade"]["cluster_cidrs"] if ":" not in c]
    pre = ["type nat hook prerouting priority dstnat; policy accept;"]
    if cidrs:
        pre.append("ip saddr { %s } goto dispatch-pod" % ", ".join(cidrs))
    pre.append("goto dispatch-external")
    base = {
        "nat-prerouting": pre,
        "nat-output": ["type nat hook output priority -100; policy accept;", "goto dispatch-node"],
        "nat-postrouting": [
            "type nat hook postrouting priority srcnat; policy accept;",
            f"meta mark & {MARK:#x} == {MARK:#x} meta mark set meta mark and {0xffffffff ^ MARK:#x} masquerade",
        ],
        "verdicts": verdicts,
    }
    for hook in ("input", "forward", "output"):
        base[f"filter-{hook}"] = [f"type filter hook {hook} priority filter; policy accept;", "ct state new jump verdicts"]
    for cls in CLASSES:
        base[f"dispatch-{cls}"] = dispatch[cls]
    out = [f"add table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    for name, rules in list(base.items()) + sorted(chains.items()):
        out.append(f"  chain {name} {{")
        out.extend(f"    {r}" for r in rules)
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n", warnings, len(chains) + len(base)


# ---------------------------------------------------------------------------
# reading the kernel back


def read_state(nft):
    try:
        data = json.loads(nft.run(["-j", "list", "table", "ip", TABLE]))
    except PluginError as e:
        if "No such file or directory" in e.message:
            return {"frontends": []}
        raise
    rules = {}
    for obj in data.get("nftables", []):
        if "rule" in obj:
            r = obj["rule"]
            rules.setdefault(r["chain"], []).append(r)

    def gotos(expr):
        out = []
        for e in expr:
            if "goto" in e:
                out.append(e["goto"]["target"])
            if "vmap" in e:
                out.extend(v[1]["goto"]["target"] for v in e["vmap"]["data"]["set"])
        return out

    def endpoints(chain, seen=()):
        """Where a chain sends new connections: a set of "ip:port"."""
        found = set()
        for r in rules.get(chain, []):
            for e in r["expr"]:
                if "dnat" in e:
                    found.add(f'{e["dnat"]["addr"]}:{e["dnat"]["port"]}')
            for target in gotos(r["expr"]):
                if target not in seen:
                    found |= endpoints(target, seen + (chain,))
        return found

    frontends = {}  # comment -> {"kind", "ip", "port", "protocol", "service", class -> set, "verdict"}

    def entry(comment):
        kind, ip, portproto, label = comment.split(" ", 3)
        port, proto = portproto.split("/")
        return frontends.setdefault(comment, {
            "frontend": {"kind": kind, "ip": None if ip == "-" else ip, "family": "IPv4", "port": int(port), "protocol": proto},
            "service": label, "classes": {}, "verdict": None,
        })

    for cls in CLASSES:
        for r in rules.get(f"dispatch-{cls}", []):
            if r.get("comment"):
                entry(r["comment"])["classes"][cls] = endpoints(gotos(r["expr"])[0])
    for r in rules.get("verdicts", []):
        if r.get("comment"):
            entry(r["comment"])["verdict"] = "Reject" if any("reject" in e for e in r["expr"]) else "Drop"
    out = []
    for fe in frontends.values():
        ext = fe["classes"].get("external")
        node = fe["classes"].get("node")
        ext_route = (sorted(ext), None) if ext else ([], fe["verdict"])
        node_route = (sorted(node), None) if node else ([], fe["verdict"])
        out.append({
            "frontend": fe["frontend"],
            "service": fe["service"],
            "endpoints": ext_route[0],
            "cluster_endpoints": node_route[0] if fe["frontend"]["kind"] != "ClusterIP" and node_route != ext_route else None,
            "empty_verdict": ext_route[1],
            "affinity_timeout_seconds": None,
        })
    return {"frontends": out}


# ---------------------------------------------------------------------------
# the protocol


class Plugin:
    def __init__(self, out):
        self.out = out
        self.context = None
        self.nft = None
        self.services = {}  # what the kernel holds after the last acked barrier
        self.batch = None

    def send(self, msg):
        self.out.write(json.dumps(msg) + "\n")
        self.out.flush()

    def log(self, level, message):
        self.send({"type": "log", "level": level, "message": message})

    def error(self, request_id, e):
        err = {"kind": e.kind, "message": e.message}
        if e.operation:
            err["operation"] = e.operation
        self.send({"type": "error", "id": request_id, "error": err})

    def on_hello(self, msg):
        if 1 not in msg["protocol_versions"]:
            self.error(msg["id"], PluginError("unavailable", "this plugin speaks protocol version 1 only"))
            return
        self.context = msg["context"]
        self.nft = Nft(self.context["netns"])
        try:
            version = self.nft.run(["--version"]).strip()
        except (OSError, PluginError) as e:
            self.error(msg["id"], PluginError("unavailable", f"nft cannot run: {e}"))
            return
        self.send({"type": "hello", "id": msg["id"], "protocol_version": 1,
                   "plugin": {"name": NAME, "version": VERSION}, "capabilities": CAPABILITIES})
        self.log("info", f"{version}; programming table ip {TABLE} in {self.context['netns'] or 'our own namespace'}")

    def on_begin(self, msg):
        self.batch = {"full": msg["full"], "changes": {}}

    def on_service(self, msg):
        self.batch["changes"][f'{msg["namespace"]}/{msg["name"]}'] = msg["plan"]

    def on_barrier(self, msg):
        desired = {} if self.batch["full"] else dict(self.services)
        for key, plan in self.batch["changes"].items():
            if plan is None:
                desired.pop(key, None)
            else:
                desired[key] = plan
        try:
            text, warnings, chains = render(desired, self.context)
            self.nft.run(["-f", "-"], stdin=text)
        except PluginError as e:
            self.error(msg["id"], e)
            return
        self.services = desired
        self.send({"type": "ack", "id": msg["id"], "objects": {"chains": chains}, "warnings": warnings})

    def on_inspect(self, msg):
        try:
            self.send({"type": "state", "id": msg["id"], "state": read_state(self.nft)})
        except PluginError as e:
            self.error(msg["id"], e)

    def on_cleanup(self, msg):
        try:
            self.nft.run(["-f", "-"], stdin=f"add table ip {TABLE}\ndelete table ip {TABLE}\n")
        except PluginError as e:
            self.error(msg["id"], e)
            return
        self.services = {}
        self.send({"type": "ack", "id": msg["id"]})


def main():
    plugin = Plugin(sys.stdout)
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        getattr(plugin, "on_" + msg["type"])(msg)
    # End of input: the daemon stopped or restarts. The rules stay in place.


if __name__ == "__main__":
    main()
