"""Benchmark of `mgvr serve`: concurrent vs sequential text queries, image queries, and the first
page of 20 thumbnails, against a real server on a real index of generated videos.

1. corpus: real videos made by ffmpeg (bench_index's generator; kept in --workdir), indexed
   by the real `mgvr index` with --model / --pretrained (default ViT-B-32, random weights:
   the real encode cost without downloading weights).
2. a real `mgvr serve` process (--threads, --workers as given), warmed with a few queries.
3. text: the same 400 queries (--clients x --per-client) sent one at a time, then by
   --clients concurrent clients (one keep-alive connection each): latency p50/p95, queries/s,
   errors.
4. image: --images frames of the corpus as PNG uploads: latency p50/p95.
5. thumbnails: a search for 20 hits, then its 20 cards' frame sprites (one image per clip)
   over 6 connections (what a browser opens per host): search + thumbnails, p50/p95 over 20
   queries; and, with Chromium, the page itself: from pressing Enter to every card's
   thumbnail loaded, p50/p95.

    .venv/bin/python bench/bench_serve.py --workdir /tmp/mgvr-bench-serve
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_index import make_corpus, make_queries
from common import machine_info, percentiles

from mgvr.serve import discovery
from mgvr.serve.client import multipart

BROWSER_CONNECTIONS = 6
PAGE = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="keep corpus and index here for the next run")
    p.add_argument("--files", type=int, default=24, help="generated videos")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=50)
    p.add_argument("--workers", type=int, help="mgvr serve --workers (default: its default)")
    p.add_argument("--threads", type=int, default=1, help="mgvr serve --threads")
    p.add_argument("--images", type=int, default=20, help="timed image queries")
    p.add_argument("--no-browser", action="store_true", help="skip the in-browser timing")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    # what bench_index's corpus generator reads
    args.seconds_min, args.seconds_max, args.fps, args.seed = 4.0, 40.0, 25, 0
    return args


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgvr.cli", *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, **kwargs)


def build(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    corpus = work / "corpus"
    if not corpus.is_dir():
        print(f"generating {args.files} videos in {corpus} ...", flush=True)
        make_corpus(corpus, args)
    index = work / f"index-{Path(args.model).stem}-{Path(args.pretrained).stem}"
    started = time.perf_counter()
    result = cli("index", str(corpus), "--index", str(index), "--model", args.model,
                 "--pretrained", args.pretrained, "--settle-seconds", "0", timeout=3600)
    if result.returncode not in (0, 3):
        raise SystemExit(f"mgvr index failed: {result.stderr.strip()[-500:]}")
    print(f"index {index}: {result.stdout.strip()} ({time.perf_counter() - started:.1f} s)")
    return corpus, index


class Server:
    def __init__(self, index: Path, args: argparse.Namespace) -> None:
        command = ["serve", "--index", str(index), "--threads", str(args.threads)]
        if args.workers:
            command += ["--workers", str(args.workers)]
        self.process = subprocess.Popen([sys.executable, "-m", "mgvr.cli", *command],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while (info := discovery.read(index)) is None or info.pid != self.process.pid:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SystemExit(f"mgvr serve did not start: {self.process.communicate()[1]}")
            time.sleep(0.1)
        self.info = info

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.info.connect_host, self.info.port, timeout=120)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def ask(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
        content_type: str | None = None) -> tuple[int, bytes, float]:
    """(status, body, milliseconds) of one request on a kept-alive connection."""
    headers = {"Content-Type": content_type} if content_type else {}
    started = time.perf_counter()
    connection.request(method, path, body, headers)
    response = connection.getresponse()
    data = response.read()
    return response.status, data, (time.perf_counter() - started) * 1000


def text_query(connection, query: str, limit: int = 10) -> tuple[int, bytes, float]:
    return ask(connection, "POST", "/search", json.dumps({"query": query, "limit": limit}).encode(),
               "application/json")


def sequential(server: Server, queries: list[str]) -> dict:
    connection = server.connection()
    latencies, errors = [], 0
    started = time.perf_counter()
    for query in queries:
        status, _, ms = text_query(connection, query)
        latencies.append(ms)
        errors += status != 200
    wall = time.perf_counter() - started
    return {**percentiles(latencies), "qps": round(len(queries) / wall, 1), "errors": errors,
            "queries": len(queries)}


def concurrent(server: Server, queries: list[str], clients: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(mine: list[str]) -> None:
        connection = server.connection()
        barrier.wait()
        for query in mine:
            try:
                status, _, ms = text_query(connection, query)
            except (OSError, http.client.HTTPException):
                status, ms = 0, 0.0
                connection = server.connection()
            with lock:
                latencies.append(ms)
                errors[0] += status != 200

    threads = [threading.Thread(target=client, args=(queries[i::clients],))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {**percentiles(latencies), "qps": round(len(queries) / wall, 1), "errors": errors[0],
            "queries": len(queries), "clients": clients}


def frame_pictures(corpus: Path, count: int, folder: Path) -> list[Path]:
    videos = sorted(p for p in corpus.iterdir() if p.is_file())
    pictures = []
    for i in range(count):
        picture = folder / f"frame{i:02d}.png"
        video = videos[i % len(videos)]
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1.5", "-i", str(video),
                        "-frames:v", "1", str(picture)], check=True, timeout=120)
        pictures.append(picture)
    return pictures


def image_queries(server: Server, pictures: list[Path]) -> dict:
    connection = server.connection()
    latencies, errors = [], 0
    for picture in pictures:
        body, content_type = multipart({"limit": 10}, "image", picture.name, picture.read_bytes())
        status, _, ms = ask(connection, "POST", "/search", body, content_type)
        latencies.append(ms)
        errors += status != 200
    return {**percentiles(latencies), "errors": errors, "queries": len(pictures)}


def first_pages(server: Server, queries: list[str]) -> dict:
    """A search of 20 hits, then its 20 thumbnails over 6 kept-alive connections."""
    search_connection = server.connection()
    pool = ThreadPoolExecutor(BROWSER_CONNECTIONS)
    local = threading.local()

    def fetch(path: str) -> tuple[int, int]:
        if not hasattr(local, "connection"):
            local.connection = server.connection()
        status, data, _ = ask(local.connection, "GET", path)
        return status, len(data)

    totals, thumbs, errors, sizes = [], [], 0, []
    for query in queries:
        started = time.perf_counter()
        status, body, _ = text_query(search_connection, query, PAGE)
        hits = json.loads(body)["hits"] if status == 200 else []
        between = time.perf_counter()
        answers = list(pool.map(fetch, [f"/clips/{h['clip_id']}/frames" for h in hits]))
        done = time.perf_counter()
        totals.append((done - started) * 1000)
        thumbs.append((done - between) * 1000)
        errors += (status != 200) + sum(s != 200 for s, _ in answers)
        sizes += [n for s, n in answers if s == 200]
    pool.shutdown()
    return {"search_and_thumbnails": percentiles(totals), "thumbnails_only": percentiles(thumbs),
            "errors": errors, "pages": len(queries),
            "thumbnail_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else None}


def in_browser(server: Server, queries: list[str]) -> dict | None:
    """From pressing Enter to every card's thumbnail loaded, measured in Chromium."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        print("(no chromium: the in-browser timing is skipped)")
        return None
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{server.info.port}/"
    times = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = context.new_page()
        page.goto(url)
        for query in queries:
            page.fill("#q", query)
            before = page.evaluate("Number(document.body.dataset.answered || 0)")
            page.evaluate("window.__pressed = performance.now()")
            page.press("#q", "Enter")
            page.wait_for_function("n => Number(document.body.dataset.answered || 0) > n",
                                   arg=before)
            page.wait_for_function("() => [...document.querySelectorAll('.card .thumb img')]"
                                   ".every(i => i.complete)")
            times.append(page.evaluate("performance.now() - window.__pressed"))
        context.close()
    return {**percentiles(times), "pages": len(queries)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mgvr-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {json.dumps(machine_info(torch.device('cpu')))}")
    corpus, index = build(work, args)
    total = args.clients * args.per_client
    queries = make_queries(total + 30, seed=1)
    warmup, timed, pages = queries[:10], queries[10:10 + total], queries[10 + total:]
    server = Server(index, args)
    try:
        connection = server.connection()
        for query in warmup:
            text_query(connection, query)
        load_before = os.getloadavg()
        result = {"machine": machine_info(torch.device("cpu")), "index": str(index),
                  "model": f"{args.model} ({args.pretrained})", "threads": args.threads,
                  "workers": args.workers, "sequential": sequential(server, timed),
                  "concurrent": concurrent(server, timed, args.clients)}
        with tempfile.TemporaryDirectory() as folder:
            result["image"] = image_queries(server, frame_pictures(corpus, args.images,
                                                                   Path(folder)))
        result["first_page"] = first_pages(server, pages[:20])
        if not args.no_browser:
            result["browser_first_page"] = in_browser(server, pages[:10])
        result["load_avg_before_after"] = [load_before, os.getloadavg()]
    finally:
        server.stop()
    report(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))


def report(r: dict) -> None:
    s, c = r["sequential"], r["concurrent"]
    print(f"\nmodel {r['model']}, serve --threads {r['threads']} --workers "
          f"{r['workers'] or 'default'}; load average before/after {r['load_avg_before_after']}")
    print(f"text, one at a time:     p50 {s['p50']:.1f} ms  p95 {s['p95']:.1f} ms  "
          f"{s['qps']:.1f} q/s  errors {s['errors']} of {s['queries']}")
    print(f"text, {c['clients']} clients at once: p50 {c['p50']:.1f} ms  p95 {c['p95']:.1f} ms  "
          f"{c['qps']:.1f} q/s  errors {c['errors']} of {c['queries']}  "
          f"({c['qps'] / s['qps']:.2f}x the sequential rate)")
    i = r["image"]
    print(f"image queries:           p50 {i['p50']:.1f} ms  p95 {i['p95']:.1f} ms  "
          f"errors {i['errors']} of {i['queries']}")
    f = r["first_page"]
    print(f"first page of {PAGE} (search + thumbnails over {BROWSER_CONNECTIONS} connections): p50 "
          f"{f['search_and_thumbnails']['p50']:.1f} ms  p95 {f['search_and_thumbnails']['p95']:.1f}"
          f" ms (thumbnails alone p50 {f['thumbnails_only']['p50']:.1f} ms)  errors {f['errors']}"
          f"  mean thumbnail {f['thumbnail_bytes_mean']} bytes")
    b = r.get("browser_first_page")
    if b:
        print(f"in Chromium, Enter to all {PAGE} thumbnails loaded: p50 {b['p50']:.1f} ms  "
              f"p95 {b['p95']:.1f} ms over {b['pages']} searches")


if __name__ == "__main__":
    main()
