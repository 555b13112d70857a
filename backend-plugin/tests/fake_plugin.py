#!/usr/bin/env python3
"""FakePlugin: a protocol-v1 plugin that programs nothing, for the daemon's tests.

It keeps the desired state in memory, answers inspect from it, and records
what it receives (one JSON line per event) in --record FILE. Flags make it
misbehave on purpose: crash, fail barriers, violate the protocol, be slow,
or listen on a Unix socket like a sidecar. Python standard library only.
"""
import argparse
import json
import os
import socket
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--record")
p.add_argument("--capabilities", default="Tcp,Udp,IPv4,ClusterIP,NodePort")
p.add_argument("--fail-barrier", type=int, default=0, help="answer the Nth barrier with a typed error")
p.add_argument("--crash-at-barrier", type=int, default=0, help="exit(3) on receiving the Nth barrier")
p.add_argument("--violate", default="", help="notjson|schema|unknown-id|wrong-answer, at the first barrier")
p.add_argument("--slow-ack", type=float, default=0.0, help="seconds to sleep before each ack")
p.add_argument("--unavailable", default="")
p.add_argument("--version", type=int, default=1)
p.add_argument("--socket")
args = p.parse_args()


def record(event, **fields):
    if args.record:
        with open(args.record, "a") as f:
            f.write(json.dumps(dict(event=event, pid=os.getpid(), **fields)) + "\n")


def addr(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def programmed(services):
    """The state a correct plugin's inspect reports, from the plans alone."""
    out = []
    for key in sorted(services):
        for port in services[key]["ports"]:
            routes = port["routes"]
            for f in port["frontends"]:
                ext = routes[f["external"]["route"]]
                clu = routes[f["pod"]["route"]]
                eps = lambda r: sorted(addr(e["ip"], e["port"]) for e in r["endpoints"])
                out.append({
                    "frontend": {k: f[k] for k in ("kind", "ip", "family", "port", "protocol")},
                    "service": port["label"],
                    "endpoints": eps(ext),
                    "cluster_endpoints": eps(clu) if f["kind"] != "ClusterIP" and clu != ext else None,
                    "empty_verdict": None if ext["verdict"] == "Forward" else ext["verdict"],
                    "affinity_timeout_seconds": port["affinity_timeout_seconds"],
                })
    return {"frontends": out}


class Session:
    def __init__(self, rfile, wfile):
        self.rfile, self.wfile = rfile, wfile
        self.services = {}
        self.batch = None
        self.barriers = 0

    def send(self, msg):
        self.wfile.write(json.dumps(msg) + "\n")
        self.wfile.flush()

    def serve(self):
        for line in self.rfile:
            if not line.strip():
                continue
            msg = json.loads(line)
            getattr(self, "on_" + msg["type"])(msg)

    def on_hello(self, msg):
        record("hello", context=msg["context"], options=msg["options"])
        if args.unavailable:
            self.send({"type": "error", "id": msg["id"], "error": {"kind": "unavailable", "message": args.unavailable}})
            return
        caps = [c for c in args.capabilities.split(",") if c]
        self.send({"type": "hello", "id": msg["id"], "protocol_version": args.version,
                   "plugin": {"name": "fake", "version": "0"}, "capabilities": caps})
        self.send({"type": "log", "level": "info", "message": "fake plugin ready"})

    def on_begin(self, msg):
        self.batch = {"full": msg["full"], "generation": msg["generation"], "services": [], "staged": {}}

    def on_service(self, msg):
        key = f'{msg["namespace"]}/{msg["name"]}'
        self.batch["services"].append(key)
        self.batch["staged"][key] = msg["plan"]

    def on_barrier(self, msg):
        self.barriers += 1
        b = self.batch
        record("batch", id=msg["id"], full=b["full"], generation=b["generation"], services=b["services"])
        if self.barriers == args.crash_at_barrier:
            sys.exit(3)
        if args.violate and self.barriers == 1:
            bad = {
                "notjson": "this is not json",
                "schema": json.dumps({"type": "ack"}),
                "unknown-id": json.dumps({"type": "ack", "id": 999}),
                "wrong-answer": json.dumps({"type": "state", "id": msg["id"], "state": {"frontends": []}}),
            }[args.violate]
            self.wfile.write(bad + "\n")
            self.wfile.flush()
            return
        if self.barriers == args.fail_barrier:
            self.send({"type": "error", "id": msg["id"],
                       "error": {"kind": "failed", "message": "injected failure", "operation": "program"}})
            return
        if args.slow_ack:
            time.sleep(args.slow_ack)
        if b["full"]:
            self.services = {}
        for key, plan in b["staged"].items():
            if plan is None:
                self.services.pop(key, None)
            else:
                self.services[key] = plan
        self.send({"type": "ack", "id": msg["id"], "objects": {"services": len(self.services)}})

    def on_inspect(self, msg):
        self.send({"type": "state", "id": msg["id"], "state": programmed(self.services)})

    def on_cleanup(self, msg):
        record("cleanup")
        self.services = {}
        self.send({"type": "ack", "id": msg["id"]})


record("start")
if args.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    srv.bind(args.socket)
    srv.listen(1)
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("r") as r, conn.makefile("w") as w:
            try:
                Session(r, w).serve()
            except (BrokenPipeError, ConnectionResetError):
                pass
else:
    Session(sys.stdin, sys.stdout).serve()
record("eof")
