"""A bounded load test of ``papertune serve`` on loopback: many clients for a while, streamed, whole and hung-up.

    python benchmarks/load_serve.py                                  # 50 clients, 60 s, CPU profile, --base-only
    python benchmarks/load_serve.py --clients 20 --duration 20 --set serve.max_queue=8
    python benchmarks/load_serve.py --url http://127.0.0.1:8000 --pid 12345   # a server already running

Without --url the server is started as ``benchmarks/bench_serve.py`` starts it (``--config``, ``--set``,
``--serve-arg``). Each client sends requests one after another until the time is up, each one of: a whole
answer, a streamed answer, a streamed answer hung up after its first piece of text, a whole answer hung up
after --hang-up-after seconds. Passes when no request gets a 5xx other than 503 ``queue_full`` (the server
refusing more than ``serve.max_queue`` waiting requests), no request that is not hung up fails, and the
server's resident memory (sampled every second after the warm-up) grows by less than --max-rss-growth-mb.
Prints a table: per kind of request the status codes and the p50/p99 latency. Bounded: at most
MAX_CLIENTS clients for at most MAX_DURATION_S seconds, and only against a loopback address.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlparse

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_answer import questions  # noqa: E402  (the answer benchmark's questions)
from bench_serve import start_server  # noqa: E402  (the server the serve benchmark starts)

from papertune.serve import is_loopback  # noqa: E402

log = logging.getLogger("load_serve")

MAX_CLIENTS = 200
MAX_DURATION_S = 600.0
KINDS = ("whole", "stream", "stream, hung up", "whole, hung up")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def one_request(session: requests.Session, url: str, kind: str, question: str, max_tokens: int,
                hang_up_after: float) -> dict:
    """{"kind", "status", "code", "seconds", "first_s", "failure"} of one request of ``kind``."""
    stream = kind.startswith("stream")
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "stream": stream}
    started = time.perf_counter()
    result = {"kind": kind, "status": None, "code": None, "seconds": None, "first_s": None, "failure": None}
    try:
        timeout = hang_up_after if kind == "whole, hung up" else 600
        with session.post(f"{url}/v1/chat/completions", json=body, stream=stream, timeout=timeout) as response:
            result["status"] = response.status_code
            if response.status_code != 200:
                result["code"] = (response.json().get("error") or {}).get("code")
            elif not stream:
                response.json()
            else:
                for line in response.iter_lines(decode_unicode=True):
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        result["failure"] = f"error event: {chunk['error']['message']}"
                        break
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        result["first_s"] = result["first_s"] or time.perf_counter() - started
                        if kind == "stream, hung up":
                            break  # closing the response hangs up mid-answer
    except requests.ReadTimeout:
        if kind != "whole, hung up":
            result["failure"] = "timed out"
        session.close()  # the connection is gone: start a new one
    except requests.RequestException as exc:
        result["failure"] = f"{type(exc).__name__}: {exc}"
        session.close()
    if kind.endswith("hung up"):
        session.close()  # the hung-up connection must not be reused
    result["seconds"] = time.perf_counter() - started
    return result


def run_load(url: str, clients: int, duration: float, max_tokens: int, hang_up_after: float, retry_wait: float,
             seed: int) -> list[dict]:
    qs = questions(64)
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(index: int) -> None:
        rng = random.Random(seed + index)
        session = requests.Session()
        while time.monotonic() < deadline:
            result = one_request(session, url, rng.choice(KINDS), rng.choice(qs), max_tokens, hang_up_after)
            with lock:
                results.append(result)
            if result["code"] == "queue_full":
                time.sleep(retry_wait)  # as a polite client does

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 660)
    return results


def sample_rss(pid: int | None, stop: threading.Event, samples: list[int]) -> None:
    if pid is None:
        return
    process = psutil.Process(pid)
    while not stop.wait(1.0):
        samples.append(process.memory_info().rss)


def table(results: list[dict]) -> list[str]:
    lines = ["| requests | count | 200 | 503 queue_full | other 4xx | 5xx | hung up before an answer | failed | "
             "latency p50 s | latency p99 s | first text p50 s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r)
    for kind in (*KINDS, "all"):
        rows = results if kind == "all" else by_kind[kind]
        if not rows:
            continue
        counts = Counter("200" if r["status"] == 200 else "queue_full" if r["code"] == "queue_full"
                         else "5xx" if (r["status"] or 0) >= 500 else "4xx" if r["status"] else "" for r in rows)
        ok = [r["seconds"] for r in rows if r["status"] == 200]
        first = [r["first_s"] for r in rows if r["first_s"] is not None]
        p50 = f"{percentile(ok, 0.5):.2f}" if ok else "-"
        p99 = f"{percentile(ok, 0.99):.2f}" if ok else "-"
        first50 = f"{percentile(first, 0.5):.2f}" if first else "-"
        failed = sum(r["failure"] is not None for r in rows)
        hung_up = sum(r["status"] is None and r["failure"] is None for r in rows)
        lines.append(f"| {kind} | {len(rows)} | {counts['200']} | {counts['queue_full']} | {counts['4xx']} | "
                     f"{counts['5xx']} | {hung_up} | {failed} | {p50} | {p99} | {first50} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running papertune serve on loopback (default: start one)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, to watch its memory")
    parser.add_argument("--config", default="configs/cpu.yaml", help="config of the server this script starts")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for the server this script starts (repeatable)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for papertune serve")
    parser.add_argument("--clients", type=int, default=50, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--duration", type=float, default=60.0, help=f"seconds of load (at most {MAX_DURATION_S:g})")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--hang-up-after", type=float, default=0.5, help="seconds a hung-up whole answer waits")
    parser.add_argument("--retry-wait", type=float, default=1.0, help="seconds a client waits after a 503")
    parser.add_argument("--max-rss-growth-mb", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads of the server this script starts")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --duration in (0, {MAX_DURATION_S:g}]")
    if args.url and not is_loopback(urlparse(args.url).hostname or ""):
        parser.error(f"--url {args.url}: this load test runs against a loopback address only")

    with tempfile.TemporaryDirectory() as scratch:
        process, url, pid = None, args.url, args.pid
        if url is None:
            process, url = start_server(args, Path(scratch))
            pid = process.pid
        try:
            card = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
            requests.post(f"{url}/v1/chat/completions", timeout=600,  # warm-up
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).raise_for_status()
            samples: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(pid, stop, samples), daemon=True)
            sampler.start()
            log.info("%d clients for %.0f s against %s", args.clients, args.duration, url)
            results = run_load(url, args.clients, args.duration, args.max_tokens, args.hang_up_after,
                               args.retry_wait, args.seed)
            time.sleep(2.0)  # the server finishes the hung-up requests
            stop.set()
            sampler.join()
            health = requests.get(f"{url}/health", timeout=30).json()
        finally:
            if process is not None:
                process.terminate()
                process.wait(60)

    model = card.get("papertune_description", card["id"])
    lines = [f"papertune serve load test: {model}; {args.clients} clients, {args.duration:.0f} s, max_tokens "
             f"{args.max_tokens}; {os.cpu_count()} CPU cores", "", *table(results), ""]
    lines.append(f"server: {health['submitted']} requests taken, {health['cancelled']} cancelled (hung up), "
                 f"{health['errors']} failed, largest batch {health['largest_batch']}; queue now {health['queued']}")
    problems = [f"{r['kind']}: HTTP {r['status']} {r['code']}" for r in results
                if (r["status"] or 0) >= 500 and r["code"] != "queue_full"]
    problems += [f"{r['kind']}: {r['failure']}" for r in results if r["failure"]]
    if samples:
        growth = (samples[-1] - samples[0]) / 2**20
        lines.append(f"server memory (RSS): {samples[0] / 2**20:.0f} MiB after warm-up, peak "
                     f"{max(samples) / 2**20:.0f} MiB, {samples[-1] / 2**20:.0f} MiB at the end ({growth:+.0f} MiB)")
        if growth > args.max_rss_growth_mb:
            problems.append(f"memory grew by {growth:.0f} MiB (over --max-rss-growth-mb {args.max_rss_growth_mb:g})")
    lines.append("PASS" if not problems else f"FAIL: {len(problems)} problem(s), e.g. {problems[:5]}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
