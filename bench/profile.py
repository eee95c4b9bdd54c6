"""Where the time goes: py-spy on `citeqa serve` under /ask load and on a one-shot `citeqa ask`.

Run: `.venv/bin/pip install py-spy` (a profiling tool, not a project dependency), then
`python -m bench.profile [--home INDEX] [--seconds 20] [--concurrency 1]`. Without --home it indexes the
seed corpus into a temporary folder first. Prints the top functions, inclusive and self, with percentages,
for the server under load, its start-up, and a one-shot `citeqa ask`; raw stacks stay in bench/cache/profile/.
"""

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from bench import serve
from bench.synth import CACHE

SEED_CORPUS = Path(__file__).resolve().parent.parent / "corpus"
PY_SPY = Path(sys.executable).with_name("py-spy")
QUESTIONS = [
    "When did the focused visit to Wakefield take place?",
    "Which inspectors carried out the visit?",
    "What did Ofsted say about caseloads?",
    "How was Kirklees rated?",
    "What were the main weaknesses at the front door?",
    "Who is the director of children's services?",
]


# Leaf frames of a thread that is waiting, not working; py-spy on this VM does not always tell them apart.
IDLE_LEAVES = (
    "Runner.run (asyncio/",
    ".wait (threading.py)",
    "_wait_for_tstate_lock",
    "Queue.get (queue.py)",
)
OUR_CODE = ("(app/", "(ingest/")


def _module_package(frame: str) -> str | None:
    """`numpy` for a frame `<module> (numpy/core/x.py)`: the package an import is running code of."""
    if not frame.startswith("<module> ("):
        return None
    path = frame[len("<module> (") : -1]
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path or path.endswith(".py") else None


def summarise(raw: Path, top: int) -> str:
    """Inclusive and self percentages per function from py-spy's collapsed stacks (idle samples left out)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    imports: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or not count.isdigit():
            continue
        n = int(count)
        if any(marker in frames[-1] for marker in IDLE_LEAVES):
            idle += n
            continue
        total += n
        for frame in dict.fromkeys(frames):
            inclusive[frame] += n
            if any(marker in frame for marker in OUR_CODE):
                ours[frame] += n
        own[frames[-1]] += n
        for package in dict.fromkeys(filter(None, map(_module_package, frames))):
            imports[package] += n
    lines = [f"{total} busy samples ({idle} idle samples left out)"]
    if not total:
        return lines[0]
    sections = [("inclusive", inclusive), ("self", own), ("inclusive, our code only", ours)]
    if imports:
        sections.append(("import of each package (inclusive)", imports))
    for title, counter in sections:
        lines.append(f"-- top {top} by {title}")
        lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


def record(args: list[str], out: Path, rate: int = 250, env: dict[str, str] | None = None) -> None:
    """Run py-spy record with collapsed-stack output."""
    cmd = [str(PY_SPY), "record", "-f", "raw", "--nolineno", "-r", str(rate), "-o", str(out), *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env)


def import_times(home: Path, top: int) -> str:
    """Import time of each top-level package a one-shot `citeqa ask` loads (python -X importtime)."""
    cmd = [sys.executable, "-X", "importtime", "-m", "app.cli", "ask", QUESTIONS[0]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=serve.citeqa_env(home), capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    own: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        # Each module's own time, charged to its top-level package: the figures add up to the import total.
        own[name.strip().split(".")[0]] += int(self_us)
    total = sum(own.values()) / 1e6
    lines = [f"wall {wall:.2f} s, imports {total:.2f} s ({100 * total / wall:.0f}%); import time by package:"]
    lines += [
        f"{us / 1e6:6.2f} s  {100 * us / 1e6 / wall:5.1f}%  {name}" for name, us in own.most_common(top)
    ]
    return "\n".join(lines)


def profile_server(home: Path, seconds: float, concurrency: int, work: Path, top: int) -> str:
    """Sample the server while clients post /ask back to back."""
    server = serve.start(home, work / "serve.log")
    stop = threading.Event()
    done = [0]

    def client(w: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            i = w
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    c.post("/ask", json={"question": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"})
                    done[0] += 1
                i += concurrency

    try:
        for w in range(concurrency):
            threading.Thread(target=client, args=(w,), daemon=True).start()
        time.sleep(2)
        record(["--pid", str(server.proc.pid), "-d", str(int(seconds)), "--nonblocking"], work / "serve.txt")
        stop.set()
    finally:
        server.stop()
    return f"{done[0]} requests\n" + summarise(work / "serve.txt", top)


def profile_startup(home: Path, work: Path, top: int) -> str:
    """Sample `citeqa serve` from spawn until /health answers, then stop it."""
    port = serve.free_port()
    out = work / "startup.txt"
    cmd = [str(PY_SPY), "record", "-f", "raw", "--nolineno", "-r", "200", "-o", str(out), "--"]
    spy = subprocess.Popen(
        [*cmd, str(serve.CITEQA), "serve", "--port", str(port)],
        env=serve.citeqa_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.perf_counter()
    with httpx.Client(timeout=5) as client:
        while time.perf_counter() - t0 < 300 and spy.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            time.sleep(0.05)
    healthy = time.perf_counter() - t0
    for child in psutil.Process(spy.pid).children():
        child.terminate()
    spy.wait(timeout=60)
    return f"healthy after {healthy:.2f} s (slowed by sampling)\n" + summarise(out, top)


def main(argv: list[str] | None = None) -> int:
    """Profile the server under load and the one-shot CLI; print both summaries."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=None, help="index to serve (default: the seed corpus)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = CACHE / "profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        home = args.home
        if home is None:
            home = Path(tempfile.mkdtemp(prefix="citeqa-profile-"))
            env = serve.citeqa_env(home)
            subprocess.run(
                [str(serve.CITEQA), "ingest", str(SEED_CORPUS)], env=env, check=True, capture_output=True
            )
        print(f"== citeqa serve under /ask load (concurrency {args.concurrency}, {args.seconds:.0f} s)")
        print(profile_server(home, args.seconds, args.concurrency, work, args.top))
        print("\n== citeqa serve start-up, spawn to a healthy /health")
        print(profile_startup(home, work, args.top))
        print("\n== citeqa ask, one-shot (whole process, imports included)")
        command = ["--", str(serve.CITEQA), "ask", QUESTIONS[0]]
        record(command, work / "ask.txt", rate=500, env=serve.citeqa_env(home))
        print(summarise(work / "ask.txt", args.top))
        print("\n== citeqa ask, one-shot: import time by top-level package (python -X importtime)")
        print(import_times(home, args.top))
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
