"""Load on the recommendation service (serving/app.py): latency percentiles and requests/s
of ``/recommend`` (training users by id) and ``/recommend_for_history`` (their training
histories, with scores, as a new user's list) from N concurrent clients on loopback,
beside calling the Recommender directly in this process.

    .venv/bin/python bench/serve_load.py --model data/model [--clients 16] [--duration 20]

It starts ``python -m serving.app --model MODEL --port 0 --quiet`` (one process, as
deployed) and stops it at the end. Each client is a thread with its own
``requests.Session`` (keep-alive), sending the next request as soon as the last one is
answered, for ``--duration`` seconds or ``--max-requests`` requests per endpoint,
whichever comes first; users are drawn at random (seeded). The direct rows call
``Recommender.recommend`` / ``recommend_for_history`` for the same kind of user, one
call at a time, in this process: what serving a request costs without HTTP, JSON and
the reasons. Every answer must be a 200 with k results; the script exits 1 otherwise.
On 2 cores the clients, the server and (for the direct rows) this process share the
same cores. The last line is the headline: /recommend p99 at N clients, and the
overhead ratio (the API's p50 at one client / the direct call's p50).
"""

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402
import requests  # noqa: E402

from serving import Recommender  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    """The service in its own process; its first line is its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "serving.app", "--model", model, "--port", "0",
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving http"):
        proc.kill()
        raise SystemExit(f"the service did not start: {line!r}")
    url = line.split()[1].rstrip("/")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the service did not answer /health")


def drive(url: str, path: str, bodies: list, clients: int, duration: float,
          max_requests: int, k: int) -> dict:
    """``clients`` threads POSTing bodies (round robin from a random start) until the time
    or the request budget runs out; latencies in seconds, and every failure."""
    latencies, errors, lock = [], [], threading.Lock()
    budget = iter(range(max_requests))
    stop = time.monotonic() + duration

    def client(seed: int):
        rng = np.random.default_rng(seed)
        with requests.Session() as session:
            while time.monotonic() < stop:
                with lock:
                    if next(budget, None) is None:
                        return
                body = bodies[rng.integers(len(bodies))]
                tick = time.perf_counter()
                try:
                    answer = session.post(url + path, json=body, timeout=30)
                    ok = answer.status_code == 200 and len(answer.json()["results"]) == k
                    problem = None if ok else f"HTTP {answer.status_code}: {answer.text[:200]}"
                except (requests.RequestException, ValueError, KeyError) as err:
                    problem = f"{type(err).__name__}: {err}"
                took = time.perf_counter() - tick
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(took)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": np.array(latencies), "errors": errors,
            "seconds": time.perf_counter() - start}


def direct(call, inputs: list, duration: float, max_requests: int) -> dict:
    """One call at a time in this process, inputs drawn at random."""
    rng = np.random.default_rng(0)
    latencies, stop = [], time.monotonic() + duration
    start = time.perf_counter()
    while time.monotonic() < stop and len(latencies) < max_requests:
        item = inputs[rng.integers(len(inputs))]
        tick = time.perf_counter()
        call(item)
        latencies.append(time.perf_counter() - tick)
    return {"latencies": np.array(latencies), "errors": [], "seconds": time.perf_counter() - start}


def row(name: str, clients: int, run: dict) -> str:
    ms = np.percentile(run["latencies"], [50, 95, 99]) * 1000 if len(run["latencies"]) else [np.nan] * 3
    rate = len(run["latencies"]) / run["seconds"]
    return (f"{name:<40}{clients:>8}{len(run['latencies']):>9}{len(run['errors']):>8}"
            f"{ms[0]:>9.1f}{ms[1]:>9.1f}{ms[2]:>9.1f}{rate:>10.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of load per endpoint and client count (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=200_000,
                        help="requests per endpoint and client count, at most (default: %(default)s)")
    parser.add_argument("--paths", nargs="+", default=["/recommend", "/recommend_for_history"],
                        choices=["/recommend", "/recommend_for_history"],
                        help="endpoints to load (default: both)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--history-users", type=int, default=300,
                        help="training users whose histories make the /recommend_for_history "
                             "bodies (default: %(default)s)")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
        parser.error("--clients and --max-requests must be >= 1, --duration > 0")

    rec = Recommender.from_pretrained(args.model)
    rng = np.random.default_rng(0)
    users = rec.users["user_id"].to_numpy()
    ids = [int(u) for u in rng.choice(users, min(len(users), 2000), replace=False)]
    histories = [[[int(a), int(s)] for a, s in zip(rec.history_ids(u), rng.integers(40, 101, 10**4))]
                 for u in ids[: args.history_users]]
    histories = [h for h in histories if h]
    user_bodies = [{"user_id": u, "k": args.k} for u in ids]
    history_bodies = [{"entries": h, "k": args.k} for h in histories]

    # Direct first (the server not yet started: this process has the cores to itself).
    rec.recommend(ids[:1], k=args.k)
    rec.recommend_for_history(histories[0], k=args.k)   # warm up (tracing, XLA per shape)
    span = min(args.duration, 10.0)
    runs = [("Recommender.recommend (direct)", 1, direct(
                lambda u: rec.recommend([u], k=args.k), ids, span, args.max_requests)),
            ("Recommender.recommend_for_history (direct)", 1, direct(
                lambda h: rec.recommend_for_history(h, k=args.k), histories, span, args.max_requests))]
    proc, url = start_server(args.model)
    try:
        bodies = {"/recommend": user_bodies, "/recommend_for_history": history_bodies}
        for path in args.paths:
            drive(url, path, bodies[path], 2, 2.0, 200, args.k)   # warm up connections
            # One client: the overhead against the direct call (at most 20 s: a median).
            runs.append((f"POST {path}", 1, drive(url, path, bodies[path], 1, min(args.duration, 20.0),
                                                  args.max_requests, args.k)))
            if args.clients > 1:
                runs.append((f"POST {path}", args.clients, drive(
                    url, path, bodies[path], args.clients, args.duration, args.max_requests, args.k)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(f"{'path':<40}{'clients':>8}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'p99 ms':>9}{'req/s':>10}")
    for name, clients, run in runs:
        print(row(name, clients, run))
    failures = [e for _, _, run in runs for e in run["errors"]]
    for problem in sorted(set(failures))[:5]:
        print(f"error: {problem}")
    p50 = {name: np.percentile(run["latencies"], 50) for name, c, run in runs if c == 1}
    print(f"model: {len(rec.anime):,} titles, {len(users):,} users, order {rec.serving['order']}; "
          f"history bodies: {np.mean([len(h) for h in histories]):.0f} titles on average")
    headline = []
    for path, method in (("/recommend", "recommend"), ("/recommend_for_history", "recommend_for_history")):
        if path not in args.paths:
            continue
        loaded = next(run for name, c, run in runs if name == f"POST {path}" and c == args.clients)
        headline.append(f"{path} p99 at {args.clients} clients "
                        f"{np.percentile(loaded['latencies'], 99) * 1000:.1f} ms, overhead (API p50 at "
                        f"1 client / direct p50) {p50[f'POST {path}'] / p50[f'Recommender.{method} (direct)']:.2f}x")
    print("; ".join(headline) + f"; {len(failures)} errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
