#!/usr/bin/env python3
"""What checking client certificates with OCSP costs a full mTLS handshake.

Four servers, each in turn on CPU 0, driven by edge-load on CPU 1 with a full
handshake (no resumption) per request, as compare.py's "full" scenario:

  srrrs-edge            CRLs, as compare.py configures it
  srrrs-edge + OCSP     the same, plus `ocsp: {policy: hard-fail}` asking an
                        `openssl ocsp` responder for the device CA
  nginx                 ssl_verify_client on, ssl_crl, as compare.py configures it
  nginx + OCSP          the same, plus ssl_ocsp leaf, ssl_ocsp_responder (the same
                        responder) and ssl_ocsp_cache

With OCSP on, the gateway processes the client's certificate flight on its handshake
pool rather than on the worker, even when the answer is cached: that hop, and the
cache look-up, are what the OCSP-on / OCSP-off ratios show. Both servers cache the
answer: the gateway should ask once per server start, nginx once per handshake begun
before its first answer came (up to one per connection). The count is reported from
the responder's log (and, for the gateway, from its own counter).

The four run in turn, --rounds times (a new server process each time); the table gives
the median of the rounds with their range, and the ratios of the medians: handshakes/s,
and the server's CPU (user + system, from /proc, all its processes) and context switches
per handshake.

Usage: loadtest/ocsp_cost.py [--duration 10] [--rounds 3] [--json FILE] [--no-build]
It builds the release binaries, writes fixtures to a temporary folder, starts and
stops every process itself (backend, responder, servers), and leaves nothing running.
"""

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from compare import (ADMIN_PORT, CLIENT_CPU, GATEWAY, LOADGEN, TICKS, gateway_config, launch, load, nginx_config,
                     prepare, run, start_backend, stop)

RESPONDER_PORT = 29480
RESPONDER = f"http://127.0.0.1:{RESPONDER_PORT}"
LOAD = ["--mode", "full", "--connections", "32"]

# name: (server, OCSP on)
VARIANTS = {
    "srrrs-edge": ("srrrs-edge", False),
    "srrrs-edge + OCSP": ("srrrs-edge", True),
    "nginx": ("nginx", False),
    "nginx + OCSP": ("nginx", True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="times each server is run, in turn (default 3)")
    parser.add_argument("--nginx-ocsp", choices=["leaf", "on"], default="leaf",
                        help="nginx's ssl_ocsp: leaf (default; what the gateway checks) or on (the whole chain)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    args = parser.parse_args()

    prepare(args.no_build, ["nginx", "openssl", "taskset", "stdbuf"])
    work = Path(tempfile.mkdtemp(prefix="srrrs-ocsp-cost-"))
    processes = []
    try:
        run([str(LOADGEN), "fixtures", "--out", str(work), "--pool", "1"])
        processes.append(start_backend(work))
        responder = Responder(work)
        processes.append(responder.process)
        runs = {name: [] for name in VARIANTS}
        for round_number in range(1, args.rounds + 1):
            for name in VARIANTS:
                figures = measure(name, work, args, responder)
                runs[name].append(figures)
                print(f"   round {round_number}, {name}: {figures}", file=sys.stderr)
        results = summarize(runs)
        print_table(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": results, "runs": runs}, indent=2))
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


class Responder:
    """`openssl ocsp` answering for the device CA from the fixtures' index, with a
    nextUpdate an hour ahead, on CPU 1; each request it receives is a line in its log."""

    def __init__(self, work):
        self.log = work / "responder.log"
        command = ["taskset", "-c", CLIENT_CPU, "stdbuf", "-oL", "-eL", "openssl", "ocsp",
                   "-index", "ocsp-index.txt", "-port", str(RESPONDER_PORT), "-rsigner", "device-ca.pem",
                   "-rkey", "device-ca.key", "-CA", "device-ca.pem", "-ignore_err", "-nmin", "60", "-text"]
        self.process = subprocess.Popen(command, cwd=work, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        # Not wait_for_port: openssl ocsp (3.0) hangs on a connection closed without a
        # request, and then serves no one.
        deadline = time.time() + 10
        while "waiting for OCSP client connections" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.time() > deadline:
                sys.exit(f"openssl ocsp did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.check(work)

    def check(self, work):
        """Asks about the load generator's certificate once: the answer must be good."""
        answer = subprocess.run(["openssl", "ocsp", "-issuer", "device-ca.pem", "-cert", "client.pem",
                                 "-url", RESPONDER, "-CAfile", "ca.pem", "-timeout", "5"],
                                cwd=work, capture_output=True, text=True, timeout=10)
        if "client.pem: good" not in answer.stdout:
            sys.exit(f"the responder does not say the client certificate is good: {answer.stdout}{answer.stderr}")

    def requests(self):
        return self.log.read_text(errors="replace").count("Received request")


def measure(name, work, args, responder):
    server, ocsp = VARIANTS[name]
    process = start_server(server, ocsp, work, args.nginx_ocsp)
    try:
        queries_before = responder.requests()
        before, switches_before = tree_cpu(process.pid), context_switches(process.pid)
        client_before = client_cpu()
        report = load(server, work, LOAD, args.duration)
        client = client_cpu() - client_before
        after, switches_after = tree_cpu(process.pid), context_switches(process.pid)
        queries = responder.requests() - queries_before
        gateway_queries = gateway_ocsp_queries() if server == "srrrs-edge" and ocsp else None
    finally:
        stop(process)
    handshakes = report["requests"]
    user, system = after[0] - before[0], after[1] - before[1]
    per_handshake = (lambda seconds: 1000 * seconds / handshakes) if handshakes else (lambda _: None)
    return {
        "handshakes_per_second": report["requests_per_second"],
        "cpu_ms_per_handshake": per_handshake(user + system),
        "user_ms_per_handshake": per_handshake(user),
        "system_ms_per_handshake": per_handshake(system),
        "context_switches_per_handshake": (switches_after - switches_before) / handshakes if handshakes else None,
        "server_busy": (user + system) / report["seconds"],
        "client_busy": client / report["seconds"],
        "latency_us": report["latency_us"],
        "statuses": report["statuses"],
        "errors": report["errors"],
        "resumed": report["handshakes"].get("resumed", 0),
        "responder_requests": queries,
        "gateway_ocsp_queries": gateway_queries,
    }


def start_server(server, ocsp, work, nginx_ocsp):
    log = open(work / f"{server}{'-ocsp' if ocsp else ''}.log", "w")
    if server == "srrrs-edge":
        path = work / "edge.yaml"
        ocsp_config = (f'ocsp: {{policy: hard-fail, responders: [{{issuer: device-ca.pem, url: "{RESPONDER}"}}], '
                       f'timeout: 2s, max_age: 1h}}')
        path.write_text(with_ocsp(gateway_config(work, False), "crl_files: [crl.pem]}",
                                  f"crl_files: [crl.pem], {ocsp_config}}}", ocsp))
        command = [str(GATEWAY), "run", "-c", str(path)]
    else:
        path = work / "nginx-mtls.conf"
        crl = f"ssl_crl {work}/crl.pem;"
        path.write_text(with_ocsp(nginx_config(work), crl,
                                  f"{crl}\n    ssl_ocsp {nginx_ocsp};\n    ssl_ocsp_responder {RESPONDER};\n"
                                  f"    ssl_ocsp_cache shared:OCSP:1m;", ocsp))
        command = ["nginx", "-c", str(path), "-p", str(work / "nginx-mtls")]
    return launch(server, command, log, work)


def with_ocsp(config, anchor, replacement, ocsp):
    """compare.py's config, with OCSP added after `anchor` when `ocsp`."""
    if not ocsp:
        return config
    if config.count(anchor) != 1:
        sys.exit(f"compare.py's config no longer has {anchor!r} once: update ocsp_cost.py")
    return config.replace(anchor, replacement)


def tree_cpu(pid):
    """User and system CPU seconds used so far by `pid` and every process under it,
    counting those of its children that have ended and been waited for."""
    user = system = 0.0
    for process in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime, stime, cutime, cstime: fields 14 to 17 of proc(5).
        user += (int(fields[11]) + int(fields[13])) / TICKS
        system += (int(fields[12]) + int(fields[14])) / TICKS
    return user, system


def client_cpu():
    """CPU seconds of the children waited for so far: edge-load's, read around its run
    (a saturated edge-load, not the server, would then bound handshakes/s)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def context_switches(pid):
    """Voluntary and involuntary context switches of the live threads of `pid` and of
    every process under it (a thread that has ended takes its count with it)."""
    total = 0
    for process in [pid, *descendants(pid)]:
        for status in Path(f"/proc/{process}/task").glob("*/status"):
            try:
                lines = status.read_text().splitlines()
            except FileNotFoundError:
                continue
            total += sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
    return total


def descendants(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def gateway_ocsp_queries():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("srrrs_ocsp_queries_total"))


def summarize(runs):
    summary = {}
    for name, figures in runs.items():
        entry = {}
        for key in ["handshakes_per_second", "cpu_ms_per_handshake", "user_ms_per_handshake",
                    "system_ms_per_handshake", "context_switches_per_handshake", "server_busy", "client_busy"]:
            values = [f[key] for f in figures if f[key] is not None]
            entry[key] = statistics.median(values) if values else None
            entry[key + "_range"] = [min(values), max(values)] if values else None
        for key in ["p50", "p99"]:
            values = [f["latency_us"][key] for f in figures if key in f["latency_us"]]
            entry[f"{key}_us"] = statistics.median(values) if values else None
        entry["failures"] = sum(sum(f["errors"].values()) + sum(n for s, n in f["statuses"].items() if s != "200")
                                + f["resumed"] for f in figures)
        entry["responder_requests"] = [f["responder_requests"] for f in figures]
        entry["gateway_ocsp_queries"] = [f["gateway_ocsp_queries"] for f in figures]
        summary[name] = entry
    for server in ["srrrs-edge", "nginx"]:
        off, on = summary[server], summary[f"{server} + OCSP"]
        on["ratio_to_ocsp_off"] = {key: on[key] / off[key] if on[key] and off[key] else None
                                   for key in ["handshakes_per_second", "cpu_ms_per_handshake",
                                               "user_ms_per_handshake", "system_ms_per_handshake"]}
        on["added_to_ocsp_off"] = {key: on[key] - off[key] if None not in (on[key], off[key]) else None
                                   for key in ["cpu_ms_per_handshake", "context_switches_per_handshake"]}
    return summary


def print_table(results, args):
    print(f"Full mTLS handshakes, {args.rounds} round(s) of {args.duration} s; median (min–max) of the rounds.\n")
    print("| server | handshakes/s | CPU ms / handshake (user + sys) | context switches / handshake "
          "| CPU 0 (server) / CPU 1 (edge-load) busy | p50 / p99 ms | responder requests (gateway's count) "
          "| failures |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in results.items():
        rate, cpu = entry["handshakes_per_second"], entry["cpu_ms_per_handshake"]
        low, high = entry["handshakes_per_second_range"] or (0, 0)
        cpu_text = "-" if cpu is None else (
            f"{cpu:.3f} ({entry['user_ms_per_handshake']:.3f} + {entry['system_ms_per_handshake']:.3f}), "
            f"{entry['cpu_ms_per_handshake_range'][0]:.3f}–{entry['cpu_ms_per_handshake_range'][1]:.3f}")
        latency = "-" if entry["p50_us"] is None else f"{entry['p50_us'] / 1000:.2f} / {entry['p99_us'] / 1000:.2f}"
        queries = ", ".join(map(str, entry["responder_requests"])) if VARIANTS[name][1] else "-"
        if any(count is not None for count in entry["gateway_ocsp_queries"]):
            queries += f" ({', '.join(map(str, entry['gateway_ocsp_queries']))})"
        switches = entry["context_switches_per_handshake"]
        switches = "-" if switches is None else f"{switches:.1f}"
        busy = f"{entry['server_busy']:.0%} / {entry['client_busy']:.0%}" if entry["server_busy"] else "-"
        print(f"| {name} | {rate:,.0f} ({low:,.0f}–{high:,.0f}) | {cpu_text} | {switches} | {busy} | {latency} "
              f"| {queries} | {entry['failures']} |")
    print("\n| OCSP on / off | handshakes/s | CPU / handshake | user | sys | CPU added / handshake "
          "| context switches added / handshake |")
    print("|---|---|---|---|---|---|---|")
    for server in ["srrrs-edge", "nginx"]:
        ratios = results[f"{server} + OCSP"]["ratio_to_ocsp_off"]
        added = results[f"{server} + OCSP"]["added_to_ocsp_off"]
        cells = ["-" if ratios[key] is None else f"{ratios[key]:.2f}×"
                 for key in ["handshakes_per_second", "cpu_ms_per_handshake", "user_ms_per_handshake",
                             "system_ms_per_handshake"]]
        cpu, switches = added["cpu_ms_per_handshake"], added["context_switches_per_handshake"]
        cells.append("-" if cpu is None else f"{1000 * cpu:+.0f} µs")
        cells.append("-" if switches is None else f"{switches:+.1f}")
        print(f"| {server} | {' | '.join(cells)} |")
    if any(entry["failures"] for entry in results.values()):
        print("\nSome handshakes failed, resumed or got a status other than 200: see the runs above.")


if __name__ == "__main__":
    main()
