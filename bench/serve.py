"""A `citeqa serve` subprocess under measurement: start-up time, latency and throughput over HTTP."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

CITEQA = Path(sys.executable).with_name("citeqa")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Settings every citeqa subprocess of this run gets (bench.run --reader puts the reader's here).
SERVER_SETTINGS: dict[str, str] = {}


def citeqa_env(home: Path, corpus: Path | None = None) -> dict[str, str]:
    """The environment of a citeqa subprocess answering from the index in `home` (none of ours inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITEQA_")}
    env.update(SERVER_SETTINGS)
    env["CITEQA_HOME"] = str(home)
    if corpus is not None:
        env["CITEQA_CORPUS"] = str(corpus)
    return env


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
    """Ask a server process to shut down with `sig`; kill it if it has not within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Server:
    """A running `citeqa serve` and how long it took to answer /health."""

    proc: subprocess.Popen[bytes]
    url: str
    startup_s: float
    health: dict[str, Any]

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        stop(self.proc, signal.SIGTERM, timeout=20)


def start(home: Path, log: Path, timeout: float = 300.0) -> Server:
    """Spawn `citeqa serve` on a free port; return once /health says ok (the time to that is start-up)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(CITEQA), "serve", "--port", str(port)],
            env=citeqa_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with httpx.Client(timeout=5) as client:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"citeqa serve exited with {proc.returncode}; see {log}")
            try:
                reply = client.get(f"{url}/health")
                if reply.status_code == 200:
                    return Server(proc, url, time.perf_counter() - t0, reply.json())
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"citeqa serve did not become healthy in {timeout} s; see {log}")


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def latency(url: str, routes: tuple[str, ...], questions: list[str], warmup: int) -> dict[str, Any]:
    """POST each question to every route in turn over one keep-alive connection; p50/p95 of wall ms per route.

    Alternating the routes request by request means a burst of load from elsewhere hits them alike.
    """
    times: dict[str, list[float]] = {r: [] for r in routes}
    stages: dict[str, dict[str, list[float]]] = {r: {} for r in routes}
    errors = dict.fromkeys(routes, 0)
    with httpx.Client(base_url=url, timeout=60) as client:
        for i, question in enumerate(questions):
            for route in routes:
                t0 = time.perf_counter()
                reply = client.post(route, json={"question": question, "top_k": 5})
                elapsed = (time.perf_counter() - t0) * 1000
                if reply.status_code != 200:
                    errors[route] += 1
                elif i >= warmup:
                    times[route].append(elapsed)
                    for stage, ms in reply.json().get("timings_ms", {}).items():
                        stages[route].setdefault(stage, []).append(ms)
    out: dict[str, Any] = {}
    for route in routes:
        t = times[route]
        out[route] = {
            "n": len(t),
            "errors": errors[route],
            "p50_ms": _pct(t, 50),
            "p95_ms": _pct(t, 95),
            "mean_ms": round(float(np.mean(t)), 2) if t else float("nan"),
        }
        if stages[route]:
            out[route]["server_stage_p50_ms"] = {k: _pct(v, 50) for k, v in stages[route].items()}
            if "read" in stages[route]:
                # The reader's share of the server's time: summed over requests, so it weighs them alike.
                share = sum(stages[route]["read"]) / max(1e-9, sum(stages[route]["total"]))
                out[route]["read_share"] = round(share, 3)
    return out


def throughput(url: str, questions: list[str], threads: int, seconds: float) -> dict[str, Any]:
    """Requests/s of /ask with `threads` clients posting back to back for `seconds`, each on its own connection."""
    done = [0] * threads
    failed = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.perf_counter() + seconds

    def worker(w: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = w
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    ok = (
                        client.post("/ask", json={"question": questions[i % len(questions)]}).status_code
                        == 200
                    )
                except httpx.HTTPError:
                    ok = False
                latencies[w].append((time.perf_counter() - t0) * 1000)
                done[w] += ok
                failed[w] += not ok
                i += threads

    t0, cpu0 = time.perf_counter(), time.process_time()
    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    # The clients share the machine with the server: what they burn is CPU the server did not get.
    client_cores = round((time.process_time() - cpu0) / elapsed, 2)
    flat = [x for lat in latencies for x in lat]
    return {
        "concurrency": threads,
        "seconds": round(elapsed, 1),
        "requests": sum(done),
        "errors": sum(failed),
        "rps": round(sum(done) / elapsed, 1),
        "p50_ms": _pct(flat, 50),
        "p95_ms": _pct(flat, 95),
        "client_cores": client_cores,
    }


def ask_once(home: Path, question: str) -> float:
    """Wall time of one `citeqa ask` subprocess, start to exit."""
    t0 = time.perf_counter()
    subprocess.run([str(CITEQA), "ask", question], env=citeqa_env(home), check=True, capture_output=True)
    return time.perf_counter() - t0
