#!/usr/bin/env python3
"""Soak test: srrrs-edge under mixed traffic for a set time, with reloads and CRL updates.

One gateway (one worker, pinned to CPU 0) in front of an nginx backend, mTLS with CRLs
and a JWT on every request, as the fixtures of `edge-load fixtures` configure it. For
--duration seconds it runs, on CPU 1:

- valid clients (the good device, valid tokens) at fixed rates: kept-alive connections
  with a distinct token each request, a new connection with a full handshake per
  request, and resumed handshakes. Every failure and every status other than 200 is an
  error;
- clients that must be refused, each in a loop of new connections: a revoked device, an
  expired one, one from an untrusted CA, no certificate; and, with the good device,
  a forged token, an expired one, one for another audience, one without a required
  claim, and none. A TLS alert or 401/403 is a refusal; any other status is an
  admission, and anything else (a timeout, a connection closed without an alert) is
  counted apart as other;
- every --reload-every seconds a reload, alternately SIGHUP and a new CRL file renamed
  over the one in force, revoking one more device. Each reload is checked: the
  revocation epoch moves, the newly revoked device was admitted before and is refused
  after, the good device is still admitted;
- every --sample-every seconds, the gateway's resident memory (VmRSS), open file
  descriptors and threads, from /proc.

It fails (exit status 1) when a valid client saw any error, an invalid client was not
refused, a reload check failed, or the resident memory grew faster than --max-rss-slope
(128) KiB per minute over the second half of the run (a least-squares fit, after the
warm-up), or ended more than --max-rss-growth (10) percent above its median over that
half.

Usage: loadtest/soak.py [--duration 600] [--reload-every 20] [--json FILE] [--no-build]
It builds the release binaries, writes fixtures to a temporary folder, starts and stops
every process itself, and leaves nothing running.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from compare import (CLIENT_CPU, GATEWAY, LOADGEN, ROOT, SERVER_CPU, gateway_config, rss_kib, run, start,
                     start_backend, stop)

PORTS = {"backend": 31080, "gateway": 31443, "admin": 31901}

# name: edge-load arguments for the good device, run at --rate (kept-alive requests) or
# --handshake-rate (new connections) per second across the class's connections
VALID = {
    "keep-alive, distinct tokens": ["--mode", "keepalive", "--connections", "8", "--tokens", "tokens-es256.txt"],
    "new connection, full handshake": ["--mode", "full", "--connections", "2", "--tokens", "token-es256.txt"],
    "new connection, resumed": ["--mode", "resumed", "--connections", "2", "--tokens", "token-rs256.txt"],
}

# name: (device certificate or None, token file or None)
INVALID = {
    "revoked device": ("revoked", "token-es256.txt"),
    "expired device": ("expired-client", "token-es256.txt"),
    "untrusted CA": ("untrusted", "token-es256.txt"),
    "no certificate": (None, "token-es256.txt"),
    "forged token": ("client", "token-forged.txt"),
    "expired token": ("client", "token-expired.txt"),
    "wrong audience": ("client", "token-wrong-audience.txt"),
    "missing claim": ("client", "token-missing-claim.txt"),
    "no token": ("client", None),
}


def main():
    args = parse_arguments()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "srrrs-edge", "-p", "edge-load"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="srrrs-soak-"))
    processes = []
    try:
        steps = args.duration // args.reload_every // 2 + 1
        run([str(LOADGEN), "fixtures", "--out", str(work), "--pool", "5000", "--revocations", str(steps)])
        processes.append(start_backend(work, PORTS["backend"]))
        gateway = start_gateway(work)
        processes.append(gateway)
        result = soak(args, work, gateway, processes)
        result["gateway_log"] = log_summary(work / "gateway.log")
    finally:
        for process in reversed(processes):
            stop(process)
        keep_or_remove(work, args.keep)
    print_report(result, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["verdict"]["pass"] else 1)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    parser.add_argument("--reload-every", type=int, default=20, help="seconds between reloads (default 20)")
    parser.add_argument("--sample-every", type=float, default=2, help="seconds between RSS samples (default 2)")
    parser.add_argument("--rate", type=int, default=400, help="kept-alive requests per second (default 400)")
    parser.add_argument("--handshake-rate", type=int, default=20,
                        help="new connections per second, full and resumed each (default 20)")
    parser.add_argument("--invalid-rate", type=float, default=2, help="attempts per second per invalid class")
    parser.add_argument("--warm-up", type=int, default=60, help="seconds left out of the RSS fit (default 60)")
    parser.add_argument("--max-rss-slope", type=float, default=128,
                        help="KiB per minute the RSS may grow over the second half (default 128)")
    parser.add_argument("--max-rss-growth", type=float, default=10,
                        help="percent the final RSS may exceed the second half's median (default 10)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (fixtures, logs)")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    args = parser.parse_args()
    if args.duration < 2 * args.reload_every:
        parser.error("--duration must cover at least two reloads")
    return args


def start_gateway(work):
    config = work / "edge.yaml"
    config.write_text(gateway_config(work, True, PORTS["gateway"], PORTS["admin"], PORTS["backend"]))
    log = open(work / "gateway.log", "w")
    return start([str(GATEWAY), "run", "-c", str(config)], PORTS["gateway"], "srrrs-edge", log, SERVER_CPU)


def soak(args, work, gateway, processes):
    """Runs the load, the reloads and the sampling; returns every measurement."""
    idle = sample(gateway.pid, 0.0)
    loads = start_loads(args, work, processes)
    started = time.monotonic()
    sampler = Sampler(gateway.pid, started, args.sample_every)
    sampler.start()
    reloads = run_reloads(args, work, gateway, started)
    finish_loads(loads, args.duration + 30)
    sampler.stop()
    valid = {name: valid_outcome(report) for name, report in loads["valid"].items()}
    invalid = {name: invalid_outcome(report) for name, report in loads["invalid"].items()}
    memory = memory_summary(idle, sampler.samples, args)
    result = {"duration": args.duration, "valid": valid, "invalid": invalid, "reloads": reloads,
              "memory": memory, "gateway_counters": gateway_counters(), "samples": sampler.samples}
    result["verdict"] = verdict(result, args)
    return result


# --- load ------------------------------------------------------------------------------


def edge_load(device, token_file, extra, duration, rate=None):
    """The edge-load command for one class of clients, pinned to the load CPU, to run in
    the fixtures' folder."""
    command = ["taskset", "-c", CLIENT_CPU, str(LOADGEN), "run", "--url", f"https://127.0.0.1:{PORTS['gateway']}/",
               "--server-name", "localhost", "--cacert", "ca.pem", "--threads", "1",
               "--duration", f"{duration}s", "--json", "-", "--quiet", *extra]
    if device:
        command += ["--cert", f"{device}.pem", "--key", f"{device}.key"]
    if token_file:
        command += ["--tokens", token_file]
    if rate:
        command += ["--rate", str(rate)]
    return command


def start_loads(args, work, processes):
    """Starts every class of clients for the whole run; they stop by themselves."""
    loads = {"valid": {}, "invalid": {}}
    log = open(work / "edge-load.log", "w")
    for name, extra in VALID.items():
        rate = args.rate if "keepalive" in extra else args.handshake_rate
        command = edge_load("client", None, extra, args.duration, rate)
        loads["valid"][name] = spawn(command, work, processes, log)
    for name, (device, token_file) in INVALID.items():
        extra = ["--mode", "full", "--connections", "1"]
        command = edge_load(device, token_file, extra, args.duration, args.invalid_rate)
        loads["invalid"][name] = spawn(command, work, processes, log)
    return loads


def spawn(command, work, processes, log):
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=log, text=True)
    processes.append(process)
    return process


def finish_loads(loads, timeout):
    """Waits for every load process and replaces it with its report."""
    for group in loads.values():
        for name, process in group.items():
            output, _ = process.communicate(timeout=timeout)
            if process.returncode != 0:
                sys.exit(f"edge-load for {name!r} failed (status {process.returncode}): see edge-load.log")
            group[name] = parse_report(output)


def parse_report(output):
    return json.loads(output[output.index("{"):])


def valid_outcome(report):
    """A valid client's requests, handshakes and errors: failures and non-200 statuses."""
    wrong = {f"status {status}": count for status, count in report["statuses"].items() if status != "200"}
    errors = {**report["errors"], **wrong}
    return {"requests": report["requests"], "requests_per_second": round(report["requests_per_second"], 1),
            "handshakes": report["handshakes"], "errors": sum(errors.values()), "error_kinds": errors,
            "latency_us": report["latency_us"]}


def invalid_outcome(report):
    """An invalid client's attempts, sorted into refused (a TLS alert, 401 or 403),
    admitted (any other status) and other (no response and no alert: a timeout, a
    connection closed or reset)."""
    outcome = {"attempts": 0, "refused": 0, "admitted": 0, "other": 0, "kinds": {}}
    for status, count in report["statuses"].items():
        kind = "refused" if status in ("401", "403") else "admitted"
        tally(outcome, kind, f"status {status}", count)
    for error, count in report["errors"].items():
        kind = "refused" if error.startswith("tls: ") else "other"
        tally(outcome, kind, error, count)
    return outcome


def tally(outcome, kind, label, count):
    outcome["attempts"] += count
    outcome[kind] += count
    outcome["kinds"][label] = outcome["kinds"].get(label, 0) + count


def probe(work, device, attempts=3):
    """`attempts` requests from `device` on new connections with a valid token."""
    extra = ["--mode", "full", "--connections", "1", "--requests", str(attempts), "--timeout", "5s"]
    command = edge_load(device, "token-es256.txt", extra, 15)
    output = subprocess.run(command, cwd=work, capture_output=True, text=True, check=True).stdout
    report = parse_report(output)
    admitted = report["statuses"].get("200", 0)
    revoked = sum(count for error, count in report["errors"].items() if "CertificateRevoked" in error)
    return {"admitted": admitted, "revoked": revoked, "attempts": attempts}


# --- reloads ---------------------------------------------------------------------------


def run_reloads(args, work, gateway, started):
    """Every --reload-every seconds until shortly before the end: a SIGHUP or a new CRL,
    alternately, each checked."""
    reloads = []
    number = 1
    while True:
        due = started + number * args.reload_every
        if due > started + args.duration - args.reload_every / 2:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        if gateway.poll() is not None:
            reloads.append({"number": number, "kind": "gateway exited", "pass": False})
            break
        at = round(time.monotonic() - started, 1)
        step = reload_by_crl(work, number // 2) if number % 2 == 0 else reload_by_signal(work, gateway)
        step.update(number=number, at=at)
        reloads.append(step)
        print(f"  {step['at']:>6.1f} s  reload {number} ({step['kind']}): {'ok' if step['pass'] else 'FAILED'}",
              file=sys.stderr)
        number += 1
    time.sleep(max(0.0, started + args.duration - time.monotonic()))
    return reloads


def reload_by_signal(work, gateway):
    """SIGHUP: everything reloads and a new revocation epoch begins; the good device is
    admitted and the devices revoked so far are still refused."""
    epoch = revocation_epoch()
    gateway.send_signal(signal.SIGHUP)
    moved = wait_for_epoch(epoch)
    good = probe(work, "client")
    revoked = probe(work, "revoked")
    checks = {"epoch moved": moved, "good device admitted": good["admitted"] == good["attempts"],
              "revoked device refused": revoked["revoked"] == revoked["attempts"]}
    return {"kind": "SIGHUP", "checks": checks, "pass": all(checks.values())}


def reload_by_crl(work, step):
    """A new CRL renamed over the one in force, revoking device-`step`: admitted before,
    refused after, while the good device is still admitted."""
    device = f"device-{step}"
    before = probe(work, device)
    epoch = revocation_epoch()
    replace_atomically(work / f"crl-{step}.pem", work / "crl.pem")
    moved = wait_for_epoch(epoch)
    after = probe(work, device)
    good = probe(work, "client")
    checks = {"epoch moved": moved, "device admitted before": before["admitted"] == before["attempts"],
              "device refused after": after["revoked"] == after["attempts"],
              "good device admitted": good["admitted"] == good["attempts"]}
    return {"kind": f"CRL revoking {device}", "checks": checks, "pass": all(checks.values())}


def replace_atomically(source, target):
    """Copies `source` beside `target`, then renames it over `target`."""
    temporary = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def metrics():
    """The gateway's metrics: {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['admin']}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {series: float(value) for series, value in lines}


def revocation_epoch():
    """The revocation epoch the gateway has in force."""
    return next((value for series, value in metrics().items() if series.startswith("srrrs_revocation_epoch")), None)


def gateway_counters():
    """The gateway's own count of what it refused and shed, to set beside the clients'."""
    names = ("srrrs_tls_handshake_failures_total", "srrrs_auth_failures_total", "srrrs_revocation_refusals_total",
             "srrrs_connections_shed_total", "srrrs_gateway_responses_total")
    return {series: int(value) for series, value in metrics().items() if series.startswith(names) and value}


def wait_for_epoch(previous, timeout=10):
    """Whether the revocation epoch moves from `previous` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if revocation_epoch() != previous:
            return True
        time.sleep(0.1)
    return False


# --- memory ----------------------------------------------------------------------------


def sample(pid, at):
    """The gateway's resident memory, open descriptors and threads at `at` seconds."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))
    return {"t": round(at, 1), "rss_kib": rss_kib(pid), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": threads}


class Sampler:
    """Samples the gateway every `every` seconds on a thread of its own."""

    def __init__(self, pid, started, every):
        self.pid, self.started, self.every = pid, started, every
        self.samples = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.thread.join()

    def loop(self):
        while not self.stopping.is_set():
            try:
                self.samples.append(sample(self.pid, time.monotonic() - self.started))
            except (OSError, StopIteration):
                return
            self.stopping.wait(self.every)


def memory_summary(idle, samples, args):
    """RSS at start, median, end and max; its slope over the second half, after the
    warm-up; descriptors and threads at start and end."""
    rss = [s["rss_kib"] for s in samples]
    half = max(args.warm_up, args.duration / 2)
    late = [s for s in samples if s["t"] >= half]
    late_rss = [s["rss_kib"] for s in late]
    return {
        "idle_kib": idle["rss_kib"], "start_kib": rss[0], "median_kib": int(statistics.median(rss)),
        "end_kib": rss[-1], "max_kib": max(rss), "second_half_median_kib": int(statistics.median(late_rss)),
        **fitted_slope([s["t"] for s in late], late_rss),
        "fds": {"idle": idle["fds"], "start": samples[0]["fds"], "end": samples[-1]["fds"],
                "max": max(s["fds"] for s in samples)},
        "threads": {"idle": idle["threads"], "end": samples[-1]["threads"],
                    "max": max(s["threads"] for s in samples)},
        "series_kib": series(samples, 10),
    }


def fitted_slope(seconds, kib):
    """The least-squares slope of the RSS, in KiB per minute, with its standard error."""
    mean_x, mean_y = statistics.fmean(seconds), statistics.fmean(kib)
    spread = sum((x - mean_x) ** 2 for x in seconds)
    if len(kib) < 3 or not spread:
        return {"slope_kib_per_minute": 0.0, "slope_stderr_kib_per_minute": None}
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(seconds, kib)) / spread
    residuals = [y - mean_y - slope * (x - mean_x) for x, y in zip(seconds, kib)]
    error = (sum(r * r for r in residuals) / (len(kib) - 2) / spread) ** 0.5
    return {"slope_kib_per_minute": round(slope * 60, 1), "slope_stderr_kib_per_minute": round(error * 60, 1)}


def series(samples, points):
    """About `points` samples, evenly spaced, for the report: (seconds, KiB)."""
    stride = max(1, len(samples) // points)
    chosen = samples[::stride] + ([samples[-1]] if (len(samples) - 1) % stride else [])
    return [(s["t"], s["rss_kib"]) for s in chosen]


# --- verdict and report ----------------------------------------------------------------


def verdict(result, args):
    memory = result["memory"]
    growth = 100 * (memory["end_kib"] - memory["second_half_median_kib"]) / memory["second_half_median_kib"]
    reasons = []
    if sum(v["errors"] for v in result["valid"].values()):
        reasons.append("valid clients saw errors")
    if sum(v["admitted"] + v["other"] for v in result["invalid"].values()):
        reasons.append("invalid clients were not all refused")
    if not all(r["pass"] for r in result["reloads"]):
        reasons.append("a reload check failed")
    if memory["slope_kib_per_minute"] > args.max_rss_slope:
        reasons.append(f"RSS grew {memory['slope_kib_per_minute']} KiB/min (limit {args.max_rss_slope})")
    if growth > args.max_rss_growth:
        reasons.append(f"RSS ended {growth:.1f}% above the second half's median (limit {args.max_rss_growth}%)")
    return {"pass": not reasons, "reasons": reasons, "end_vs_second_half_median_percent": round(growth, 2)}


def print_report(result, args):
    print(f"== soak: {result['duration']} s, a reload every {args.reload_every} s")
    print("valid clients:")
    for name, v in result["valid"].items():
        print(f"  {name:32} {v['requests']:>9,} requests ({v['requests_per_second']}/s), handshakes "
              f"{v['handshakes']}, errors {v['errors']}" + (f" {v['error_kinds']}" if v["error_kinds"] else ""))
    print("invalid clients:")
    for name, v in result["invalid"].items():
        print(f"  {name:32} {v['attempts']:>6,} attempts, refused {v['refused']}, admitted {v['admitted']}, "
              f"other {v['other']}  {v['kinds']}")
    print_reloads(result["reloads"])
    print_memory(result["memory"], args)
    print("gateway counted: " + ", ".join(f"{series.removeprefix('srrrs_')} {value}"
                                          for series, value in result["gateway_counters"].items()))
    log = result["gateway_log"]
    print(f"gateway log: {log['lines']} lines, {log['warnings']} warnings, {log['errors']} errors, "
          f"{log['crl_reloads']} CRL reloads")
    outcome = "PASS" if result["verdict"]["pass"] else "FAIL: " + "; ".join(result["verdict"]["reasons"])
    print(f"result: {outcome}")


def print_reloads(reloads):
    passed = sum(r["pass"] for r in reloads)
    kinds = {}
    for r in reloads:
        kind = "SIGHUP" if r["kind"] == "SIGHUP" else "CRL"
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"reloads: {len(reloads)} ({kinds}), {passed} passed every check")
    for r in reloads:
        if not r["pass"]:
            print(f"  reload {r['number']} at {r.get('at')} s ({r['kind']}) failed: {r.get('checks')}")


def print_memory(memory, args):
    print(f"RSS (KiB): idle {memory['idle_kib']:,}, start {memory['start_kib']:,}, median {memory['median_kib']:,}, "
          f"end {memory['end_kib']:,}, max {memory['max_kib']:,}; slope over the second half "
          f"{memory['slope_kib_per_minute']} ± {memory['slope_stderr_kib_per_minute']} KiB/min "
          f"(limit {args.max_rss_slope})")
    print("RSS series (s: KiB): " + ", ".join(f"{t:.0f}: {kib:,}" for t, kib in memory["series_kib"]))
    fds, threads = memory["fds"], memory["threads"]
    print(f"open fds: idle {fds['idle']}, start {fds['start']}, end {fds['end']}, max {fds['max']}; "
          f"threads: idle {threads['idle']}, end {threads['end']}, max {threads['max']}")


def log_summary(path):
    lines = path.read_text(errors="replace").splitlines()
    return {"lines": len(lines), "warnings": sum(" WARN " in line for line in lines),
            "errors": sum(" ERROR " in line for line in lines),
            "crl_reloads": sum("CRLs reloaded" in line for line in lines),
            "last_warnings": [line for line in lines if " WARN " in line or " ERROR " in line][-5:]}


def keep_or_remove(work, keep):
    if keep:
        print(f"fixtures and logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
