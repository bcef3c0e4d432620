#!/usr/bin/env python3
"""Side-by-side load test: srrrs-edge, HAProxy 2.6 and nginx, on this machine.

Same certificates, tokens and backend for every server. The server under test is
pinned to CPU 0 and edge-load (with the backend) to CPU 1. For each scenario it
reports operations per second at full load, latency percentiles at a fixed moderate
rate (half of HAProxy's peak), and the server's CPU seconds per 1,000 operations read
from /proc, with the ratio srrrs-edge / HAProxy from the same run.

Usage: loadtest/compare.py [--duration 10] [--only SCENARIO ...] [--json FILE]
It builds the release binaries, writes fixtures to a temporary folder, starts and
stops every process itself, and leaves nothing running.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
GATEWAY = TARGET / "srrrs-edge"
LOADGEN = TARGET / "edge-load"
SERVER_CPU = "0"
CLIENT_CPU = "1"
TICKS = os.sysconf("SC_CLK_TCK")
# The sandbox's hard limit on open files is 20000; HAProxy reserves two descriptors per
# connection, so the idle scenario holds 9,000 connections rather than 10,000.
IDLE_CONNECTIONS = 9000

PORTS = {"backend": 29080, "srrrs-edge": 29443, "haproxy": 29444, "nginx": 29445}
ADMIN_PORT = 29901

UNCACHED = "uncached"

# name: (description, edge-load arguments, auth, servers). auth: False (no token
# check), True, or UNCACHED (the token cache off, so that every request pays the
# signature check, as HAProxy's jwt_verify does).
SCENARIOS = {
    "full": ("full mTLS handshakes (P-256, one intermediate, CRL checked)",
             ["--mode", "full", "--connections", "32"], False, ["srrrs-edge", "haproxy", "nginx"]),
    "resumed-tls13": ("resumed TLS 1.3 handshakes",
                      ["--mode", "resumed", "--tls", "1.3", "--connections", "32"], False,
                      ["srrrs-edge", "haproxy", "nginx"]),
    "resumed-tls12": ("resumed TLS 1.2 handshakes",
                      ["--mode", "resumed", "--tls", "1.2", "--connections", "32"], False,
                      ["srrrs-edge", "haproxy", "nginx"]),
    "keepalive-es256": ("keep-alive requests, ES256 JWT, same token",
                        ["--mode", "keepalive", "--connections", "64", "--tokens", "token-es256.txt"], True,
                        ["srrrs-edge", "haproxy"]),
    "keepalive-rs256": ("keep-alive requests, RS256 JWT, same token",
                        ["--mode", "keepalive", "--connections", "64", "--tokens", "token-rs256.txt"], True,
                        ["srrrs-edge", "haproxy"]),
    "keepalive-es256-distinct": ("keep-alive requests, ES256 JWT, a distinct token each time",
                                 ["--mode", "keepalive", "--connections", "64", "--tokens", "tokens-es256.txt"], UNCACHED,
                                 ["srrrs-edge", "haproxy"]),
    "idle": (f"{IDLE_CONNECTIONS:,} idle TLS connections (memory per connection)",
             ["--mode", "idle", "--connections", str(IDLE_CONNECTIONS)], False,
             ["srrrs-edge", "haproxy", "nginx"]),
}


# The Debian package each tool the load tests use comes in.
PACKAGES = {"haproxy": "haproxy", "nginx": "nginx-light", "taskset": "util-linux",
            "openssl": "openssl", "stdbuf": "coreutils"}


def prepare(no_build, tools):
    """Builds the release binaries (unless no_build), and exits naming the package to
    install when one of `tools` is missing."""
    if not no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "srrrs-edge", "-p", "edge-load"], cwd=ROOT, check=True)
    for tool in tools:
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is needed: apt-get install {' '.join(PACKAGES[t] for t in tools)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    args = parser.parse_args()

    prepare(args.no_build, ["haproxy", "nginx", "taskset"])
    work = Path(tempfile.mkdtemp(prefix="srrrs-compare-"))
    processes = []
    try:
        run([str(LOADGEN), "fixtures", "--out", str(work), "--pool", "5000"])
        processes.append(start_backend(work))
        scenarios = args.only or list(SCENARIOS)
        results = {}
        for name in scenarios:
            results[name] = run_scenario(name, work, args.duration, processes)
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


def run(command, **kwargs):
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def wait_for_port(port, process, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited: see its log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


def start(command, port, what, log, cpu):
    process = subprocess.Popen(["taskset", "-c", cpu, *command], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, process, what)
    time.sleep(0.3)
    return process


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def nginx_common(work, name):
    base = work / name
    (base / "tmp").mkdir(parents=True, exist_ok=True)
    return f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 18000; }}
http {{
  access_log off;
  client_body_temp_path {base}/tmp/body;
  proxy_temp_path {base}/tmp/proxy;
  fastcgi_temp_path {base}/tmp/fastcgi;
  uwsgi_temp_path {base}/tmp/uwsgi;
  scgi_temp_path {base}/tmp/scgi;
  keepalive_requests 10000000;
"""


def start_backend(work, port=PORTS["backend"]):
    config = nginx_common(work, "backend") + f"""
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""
    path = work / "backend.conf"
    path.write_text(config)
    log = open(work / "backend.log", "w")
    return start(["nginx", "-c", str(path), "-p", str(work / "backend")], port, "backend nginx", log, CLIENT_CPU)


def gateway_config(work, auth, port=PORTS["srrrs-edge"], admin=ADMIN_PORT, backend=PORTS["backend"]):
    application = """  application_auth:
    type: jwt
    issuer: "https://idp.load.test"
    audience: api-gateway
    jwks_file: jwks.json
    required_claims: {department: engineering, clearance_level: high}
""" if auth else ""
    if auth == UNCACHED:
        application += "    token_cache_size: 0\n"
    return f"""listen: ["127.0.0.1:{port}"]
runtime: {{workers: 1}}
admin: {{listen: "127.0.0.1:{admin}"}}
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security: {{mode: mtls, client_ca_cert: ca.pem, require_crl_check: true, crl_files: [crl.pem]}}
{application}  upstream: {{backends: ["127.0.0.1:{backend}"]}}
"""


def haproxy_config(work, auth):
    jwt = """  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request set-var(txn.ok) var(txn.bearer),jwt_verify("ES256","es256.pub.pem") if { var(txn.alg) -m str ES256 }
  http-request set-var(txn.ok) var(txn.bearer),jwt_verify("RS256","rs256.pub.pem") if { var(txn.alg) -m str RS256 }
  http-request deny deny_status 401 unless { var(txn.ok) -m int 1 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('$.iss') -m str https://idp.load.test }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('$.aud') -m str api-gateway }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny deny_status 403 unless { var(txn.bearer),jwt_payload_query('$.department') -m str engineering }
  http-request deny deny_status 403 unless { var(txn.bearer),jwt_payload_query('$.clearance_level') -m str high }
""" if auth else ""
    return f"""global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend edge
  bind 127.0.0.1:{PORTS['haproxy']} ssl crt server-with-key.pem ca-file ca.pem crl-file crl.pem verify required alpn http/1.1
{jwt}  default_backend app
backend app
  server s1 127.0.0.1:{PORTS['backend']}
"""


def nginx_config(work):
    return nginx_common(work, "nginx-mtls") + f"""
  upstream app {{ server 127.0.0.1:{PORTS['backend']}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {work}/server.pem;
    ssl_certificate_key {work}/server.key;
    ssl_client_certificate {work}/ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_crl {work}/crl.pem;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def start_server(server, work, auth):
    log = open(work / f"{server}.log", "w")
    if server == "srrrs-edge":
        path = work / "edge.yaml"
        path.write_text(gateway_config(work, auth))
        command = [str(GATEWAY), "run", "-c", str(path)]
    elif server == "haproxy":
        path = work / "haproxy.cfg"
        path.write_text(haproxy_config(work, auth))
        command = ["haproxy", "-db", "-f", str(path)]
    else:
        path = work / "nginx-mtls.conf"
        path.write_text(nginx_config(work))
        command = ["nginx", "-c", str(path), "-p", str(work / "nginx-mtls")]
    return launch(server, command, log, work)


def launch(server, command, log, work):
    """Starts a server's command on the server's CPU and waits until it listens."""
    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, *command], stdout=log, stderr=subprocess.STDOUT,
                               cwd=work)
    wait_for_port(PORTS[server], process, server)
    time.sleep(0.3)
    return process


def cpu_seconds(pid):
    """User and system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(server, work, extra, duration, rate=None):
    command = ["taskset", "-c", CLIENT_CPU, str(LOADGEN), "run", "--url", f"https://127.0.0.1:{PORTS[server]}/",
               "--server-name", "localhost", "--cacert", "ca.pem", "--cert", "client.pem", "--key", "client.key",
               "--threads", "1", "--duration", f"{duration}s", "--json", "-", "--quiet"]
    command += list(extra)
    if rate:
        command += ["--rate", str(rate)]
    output = subprocess.run(command, cwd=work, capture_output=True, text=True, check=True).stdout
    return json.loads(output[output.index("{"):])


def run_scenario(name, work, duration, processes):
    description, extra, auth, servers = SCENARIOS[name]
    print(f"== {description}", file=sys.stderr)
    outcome = {"description": description, "servers": {}}
    for server in servers:
        process = start_server(server, work, auth)
        try:
            if name == "idle":
                outcome["servers"][server] = idle_run(process, server, work, extra, duration)
            else:
                user_before, system_before = cpu_seconds(process.pid)
                report = load(server, work, extra, duration)
                user_after, system_after = cpu_seconds(process.pid)
                user, system = user_after - user_before, system_after - system_before
                operations = report["requests"]
                per_1000 = (lambda seconds: 1000 * seconds / operations) if operations else (lambda _: None)
                outcome["servers"][server] = {
                    "ops_per_second": report["requests_per_second"],
                    "cpu_seconds_per_1000": per_1000(user + system),
                    "user_seconds_per_1000": per_1000(user),
                    "system_seconds_per_1000": per_1000(system),
                    "errors": report["errors"],
                    "statuses": report["statuses"],
                    "handshakes": report["handshakes"],
                }
            print(f"   {server}: {outcome['servers'][server]}", file=sys.stderr)
        finally:
            stop(process)
    if name != "idle" and "haproxy" in outcome["servers"]:
        rate = max(1, int(outcome["servers"]["haproxy"]["ops_per_second"] / 2))
        outcome["latency_rate"] = rate
        for server in servers:
            process = start_server(server, work, auth)
            try:
                report = load(server, work, extra, duration, rate=rate)
                outcome["servers"][server]["latency_us"] = report["latency_us"]
            finally:
                stop(process)
    return outcome


def idle_run(process, server, work, extra, duration):
    """Memory per held connection: resident memory once every connection is open (the
    last seconds of the hold, after the transient memory of the handshakes), less the
    memory before; the peak during the ramp is reported too."""
    before = rss_kib(process.pid)
    hold = max(duration, 12)
    loadgen = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, str(LOADGEN), "run", "--url", f"https://127.0.0.1:{PORTS[server]}/",
         "--server-name", "localhost", "--cacert", "ca.pem", "--cert", "client.pem", "--key", "client.key",
         "--threads", "1", "--duration", f"{hold}s", "--timeout", "60s", "--json", "-", "--quiet", *extra],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = time.time()
    peak, settled = before, []
    while loadgen.poll() is None:
        rss = rss_kib(process.pid)
        peak = max(peak, rss)
        if hold - 4 <= time.time() - started <= hold - 1:
            settled.append(rss)
        time.sleep(0.2)
    output = loadgen.stdout.read()
    report = json.loads(output[output.index("{"):])
    held = report["held_connections"]
    settled = sorted(settled)[len(settled) // 2] if settled else peak
    return {"held": held, "rss_kib_before": before, "rss_kib_peak": peak, "rss_kib_settled": settled,
            "kib_per_connection": (settled - before) / held if held else None,
            "peak_kib_per_connection": (peak - before) / held if held else None, "errors": report["errors"]}


def ratio(results, name, key):
    servers = results[name]["servers"]
    ours, theirs = servers.get("srrrs-edge", {}).get(key), servers.get("haproxy", {}).get(key)
    return f"{ours / theirs:.2f}x" if ours and theirs else "-"


def print_table(results):
    print("| scenario | server | ops/s | CPU s / 1000 ops (user + sys) | p50 µs | p90 µs | p99 µs | p99.9 µs "
          "| max µs | memory / conn (peak) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, outcome in results.items():
        for server, figures in outcome["servers"].items():
            latency = figures.get("latency_us", {})
            memory = figures.get("kib_per_connection")
            cpu = figures.get("cpu_seconds_per_1000")
            split = (f" ({figures['user_seconds_per_1000']:.3f} + {figures['system_seconds_per_1000']:.3f})"
                     if cpu is not None else "")
            peak = figures.get("peak_kib_per_connection")
            memory = "" if memory is None else f"{memory:.1f} KiB ({peak:.1f})"
            print(f"| {name} | {server} | {figures.get('ops_per_second', 0):,.0f} | "
                  f"{'' if cpu is None else f'{cpu:.3f}'}{split} | "
                  + " | ".join(str(latency.get(p, "")) for p in ["p50", "p90", "p99", "p99.9", "max"])
                  + f" | {memory} |")
        if name == "idle":
            print(f"| {name} | **srrrs-edge / HAProxy** | | | | | | | | {ratio(results, name, 'kib_per_connection')} |")
        else:
            print(f"| {name} | **srrrs-edge / HAProxy** | {ratio(results, name, 'ops_per_second')} | "
                  f"{ratio(results, name, 'cpu_seconds_per_1000')} ({ratio(results, name, 'user_seconds_per_1000')}"
                  f" + {ratio(results, name, 'system_seconds_per_1000')}) | | | | | | |")


if __name__ == "__main__":
    main()
