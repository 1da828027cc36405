"""What the benchmark scripts share: a `hopscope serve` on loopback, process measurements, timing."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def die(message):
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(1)


class Server:
    """A `hopscope serve` on ephemeral loopback ports."""

    def __init__(self, binary, data_dir, *extra, env=None, answers_queries=True):
        """`answers_queries`: False for the roles that answer none (`--role ingester`,
        `--role distributor`), which refuse the query flags the benchmarks give servers."""
        self.log = []
        queries = ["--query-timeout", "10m", "--query-max-rows", "1000000"] if answers_queries else []
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--otlp-grpc-addr", "127.0.0.1:0",
             "--otlp-http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", *queries, *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        listening = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                if "hopscope listening" in line:
                    self.grpc = re.search(r"otlp_grpc=(\S+)", line).group(1)
                    self.http = re.search(r"otlp_http=(\S+)", line).group(1)
                    self.api = re.search(r"api=(\S+)", line).group(1)
                    listening.set()

        threading.Thread(target=pump, daemon=True).start()
        if not listening.wait(60):
            self.proc.kill()
            die("hopscope did not start:\n" + "".join(self.log))

    def get(self, path):
        with urllib.request.urlopen(f"http://{self.api}{path}", timeout=600) as response:
            return json.load(response)

    def sql(self, query):
        request = urllib.request.Request(
            f"http://{self.api}/api/v1/sql", data=json.dumps({"sql": query}).encode(),
            headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.load(response)["rows"]
        except urllib.error.HTTPError as e:
            die(f"/sql failed: {e.read().decode()}\n{query}")

    def metric(self, name):
        with urllib.request.urlopen(f"http://{self.api}/metrics", timeout=60) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        die(f"no metric {name}")

    def cpu_seconds(self):
        """User + system CPU time the server process has used."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss(self):
        """Peak resident memory (VmHWM), in bytes."""
        return self._status_bytes("VmHWM:")

    def rss(self):
        """Resident memory now (VmRSS), in bytes."""
        return self._status_bytes("VmRSS:")

    def _status_bytes(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)


def timed(fn, repeat):
    """Runs fn `repeat` times; returns (last result, median seconds)."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def run(*command):
    """Runs a command; its stdout, or the run dies with its stderr."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        die(f"{' '.join(command)} failed:\n{done.stderr}")
    return done.stdout


def committed_files(data_dir):
    """The span files the committed manifest lists (not files a compaction is writing)."""
    with open(os.path.join(data_dir, "default", "manifest.json")) as f:
        manifest = json.load(f)
    return [os.path.join(data_dir, "default", entry["path"]) for entry in manifest["files"]]


def committed_derived_files(data_dir):
    """The files derived from the committed span files, as (table, path): traces, edges,
    critical_path, findings and the rollups."""
    with open(os.path.join(data_dir, "default", "manifest.json")) as f:
        manifest = json.load(f)
    return [(derived["table"], os.path.join(data_dir, "default", derived["path"]))
            for entry in manifest["files"] for derived in entry.get("derived", [])]


def machine():
    import platform
    return f"{platform.machine()}, {os.cpu_count()} cores"
