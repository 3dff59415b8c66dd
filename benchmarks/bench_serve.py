"""Benchmark ``papertune serve`` over HTTP: requests/s and completion tokens/s at 1 and 8 concurrent clients.

    python benchmarks/bench_serve.py                       # starts a server: CPU profile's model, --base-only
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --model papertune   # a server already running

Without --url the script starts ``papertune serve --config configs/cpu.yaml --base-only --no-cite`` (SmolLM2-
135M-Instruct, nothing trained) on a free port in a scratch run directory, and stops it at the end
(--config, --set and --serve-arg change what is started). Each client sends its questions one after
another over a keep-alive connection; every setting gets the same --requests questions, greedy, with
max_tokens --max-tokens, after one warm-up request. Greedy requests that wait together, streamed or
not, are generated in one batch (serve.max_batch_size), so 8 clients show what batching buys. Latency is
per request; "first text" is the time to the first piece of the answer (for whole answers: the latency).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_serve")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_answer import questions  # noqa: E402  (the same question set as the answer benchmark)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, scratch: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log_file = scratch / "serve.log"
    command = [sys.executable, "-m", "papertune", "serve", "--config", args.config, "--base-only", "--no-cite",
               "--port", str(port), "--run-dir", str(scratch / "run"), *args.serve_arg]
    for item in args.set:
        command += ["--set", item]
    log.info("starting %s", " ".join(command))
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file.open("w"), cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                return process, url
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise SystemExit(f"the server did not come up in {args.startup_timeout:.0f}s:\n{log_file.read_text()[-3000:]}")
        time.sleep(0.5)


def one_request(session: requests.Session, url: str, body: dict) -> dict:
    """{"tokens", "seconds", "first_s"} of one chat completion (streamed when body says so)."""
    started = time.perf_counter()
    response = session.post(f"{url}/v1/chat/completions", json=body, stream=body.get("stream", False), timeout=3600)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
    if not body.get("stream"):
        tokens = response.json()["usage"]["completion_tokens"]
        seconds = time.perf_counter() - started
        return {"tokens": tokens, "seconds": seconds, "first_s": seconds}
    first, tokens = None, 0
    for line in response.iter_lines(decode_unicode=True):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: "):])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "first_s": first if first is not None else seconds}


def measure(url: str, model: str | None, qs: list[str], concurrency: int, max_tokens: int, stream: bool) -> dict:
    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    work = list(enumerate(qs))

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not work or errors:
                    return
                _, question = work.pop(0)
            body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0}
            if model:
                body["model"] = model
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            try:
                result = one_request(session, url, body)
            except BaseException as exc:  # reported after the threads end
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise SystemExit(f"a request failed: {errors[0]}")
    tokens = sum(r["tokens"] for r in results)
    latencies = sorted(r["seconds"] for r in results)
    return {"requests": len(results), "seconds": seconds, "tokens": tokens, "rps": len(results) / seconds,
            "tps": tokens / seconds, "latency_p50": statistics.median(latencies),
            "latency_max": latencies[-1], "first_p50": statistics.median(r["first_s"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running papertune serve (default: start one)")
    parser.add_argument("--model", help="the model id to send (default: none, the server's own)")
    parser.add_argument("--config", default="configs/cpu.yaml", help="config of the server this script starts")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for the server this script starts (repeatable)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for papertune serve")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client counts to measure")
    parser.add_argument("--requests", type=int, default=16, help="requests per setting")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--modes", nargs="+", choices=["batch", "stream"], default=["batch", "stream"],
                        help="batch: non-streaming requests (batched when concurrent); stream: streaming ones")
    parser.add_argument("--threads", type=int, help="torch CPU threads of the server this script starts "
                        "(OMP_NUM_THREADS; default: torch's, use fewer on a busy machine)")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    with tempfile.TemporaryDirectory() as scratch_name:
        process = None
        url = args.url
        if url is None:
            process, url = start_server(args, Path(scratch_name))
        try:
            card = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
            one_request(requests.Session(), url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                                  **({"model": args.model} if args.model else {})})  # warm-up
            health = requests.get(f"{url}/health", timeout=30).json()
            qs = questions(args.requests)
            rows = []
            for mode in args.modes:
                for concurrency in args.concurrency:
                    log.info("%s, %d concurrent client(s), %d requests", mode, concurrency, len(qs))
                    rows.append((mode, concurrency,
                                 measure(url, args.model, qs, concurrency, args.max_tokens, mode == "stream")))
            batches = requests.get(f"{url}/health", timeout=30).json()
        finally:
            if process is not None:
                process.terminate()
                process.wait(60)
    lines = [
        f"papertune serve benchmark: {card.get('papertune_description', card['id'])}; {args.requests} requests per "
        f"row, max_tokens {args.max_tokens}, greedy; {os.cpu_count()} CPU cores on this machine",
        "",
        "| mode | clients | requests | seconds | requests/s | completion tokens | completion tokens/s | "
        "latency p50 s | latency max s | first text p50 s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, concurrency, r in rows:
        lines.append(f"| {mode} | {concurrency} | {r['requests']} | {r['seconds']:.2f} | {r['rps']:.2f} | {r['tokens']} | "
                     f"{r['tps']:.1f} | {r['latency_p50']:.2f} | {r['latency_max']:.2f} | {r['first_p50']:.2f} |")
    lines += ["", f"server: {batches['batches'] - health['batches']} generation batches for "
              f"{batches['requests'] - health['requests']} requests, largest batch {batches['largest_batch']}"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
