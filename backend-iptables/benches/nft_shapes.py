#!/usr/bin/env python3
"""What nf_tables charges for iptables-nft rulesets of different shapes.

Loads synthetic nat tables (N ClusterIP-like Services x E endpoints, one
DNAT rule per endpoint, in 100 leaf chains behind one dispatch chain) with
`iptables-nft-restore`, then times a commit that adds one rule: the kernel
re-validates every rule reachable from the table's base chains on such a
commit, so its cost is the floor under any partial sync of that table.
Shapes vary what the README's "What bounds the rest" discusses: the nat
OUTPUT hook, per-rule comments and `statistic` matches, and one chain per
Service instead of rules inlined in leaves.

    sudo python3 backend-iptables/benches/nft_shapes.py [SERVICES] [ENDPOINTS]

Runs in a throwaway network namespace (`swy-shapes-<pid>`), deleted on
exit. Prints figures; asserts nothing about time.
"""

import os
import statistics
import subprocess
import sys
import time

NS = f"swy-shapes-{os.getpid()}"
LEAVES = 100


def run(args, stdin=None):
    r = subprocess.run(["ip", "netns", "exec", NS] + args, input=stdin, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()[:400]}")


def ruleset(n, eps, hooks=("PREROUTING", "OUTPUT"), comment=True, stat=True, per_service_chain=False):
    out = ["*nat", ":SY-SVC - [0:0]"]
    out += [f":SY-L{l} - [0:0]" for l in range(LEAVES)]
    if per_service_chain:
        out += [f":SY-S{s} - [0:0]" for s in range(n)]
    out += [f"-A {h} -j SY-SVC" for h in hooks]
    out += [f"-A SY-SVC -d 10.{96 + l // 250}.{l % 250}.0/24 -j SY-L{l}" for l in range(LEAVES)]
    for s in range(n):
        leaf = s % LEAVES
        match = f"-d 10.{96 + leaf // 250}.{leaf % 250}.{s // LEAVES % 250}/32 -p tcp -m tcp --dport {80 + s // (LEAVES * 250)}"
        note = f' -m comment --comment "ns-{s}/svc-{s}:80 cluster IP"' if comment else ""
        if per_service_chain:
            out.append(f"-A SY-L{leaf} {match}{note} -j SY-S{s}")
            prefix, note = f"-A SY-S{s} -p tcp", ""
        else:
            prefix = f"-A SY-L{leaf} {match}"
        for e in range(eps):
            k = s * eps + e
            rule = prefix + (note if e == 0 else "")
            if stat and e < eps - 1:
                rule += f" -m statistic --mode random --probability {1 / (eps - e):.11f}"
            rule += f" -j DNAT --to-destination 10.{128 + k // 65536 % 64}.{k // 256 % 256}.{k % 256}:8080"
            out.append(rule)
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def one_rule_commit(reps=9):
    times = []
    for i in range(reps):
        payload = f"*nat\n-A SY-L5 -d 192.0.2.{i + 1}/32 -p tcp -j DNAT --to-destination 10.200.0.1:80\nCOMMIT\n"
        t = time.perf_counter()
        run(["iptables-nft-restore", "--noflush"], payload)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    eps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    shapes = [
        ("inlined in leaves, statistic, comment", {}),
        ("... nat PREROUTING hook only", {"hooks": ("PREROUTING",)}),
        ("... no statistic", {"stat": False}),
        ("... no comment, no statistic", {"comment": False, "stat": False}),
        ("... not hooked at all", {"hooks": ()}),
        ("one chain per Service", {"per_service_chain": True}),
    ]
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        print(f"{n} Services x {eps} endpoints, {LEAVES} leaves; iptables-nft-restore, median of 9 one-rule commits")
        for name, kw in shapes:
            run(["iptables-nft", "-t", "nat", "-F"])
            run(["iptables-nft", "-t", "nat", "-X"])
            payload = ruleset(n, eps, **kw)
            before = os.times()
            t = time.perf_counter()
            run(["iptables-nft-restore", "--noflush"], payload)
            load = time.perf_counter() - t
            after = os.times()
            user = after.children_user - before.children_user
            system = after.children_system - before.children_system
            print(
                f"  {name:42s} load {load:5.2f} s (user {user:4.2f}, kernel {system:4.2f})"
                f"   one-rule commit {one_rule_commit():6.1f} ms",
                flush=True,
            )
    finally:
        subprocess.run(["ip", "netns", "del", NS])


if __name__ == "__main__":
    main()
