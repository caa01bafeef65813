"""Load on the recommendation service (serving/app.py): latency percentiles and requests/s
of ``/recommend`` (training users by id), ``/recommend_for_history`` (their training
histories, with scores, as a new user's list) and ``/recommend`` for AniList users by name
(their lists fetched from the stand-in AniList server of tests/ over the raw store the
model came from) from N concurrent clients on loopback, beside calling the Recommender
directly in this process.

    .venv/bin/python bench/serve_load.py --model data/model [--db data/anirank.db]
                                         [--clients 16] [--duration 20]

It starts ``python -m serving.app --model MODEL --port 0 --quiet`` (one process, as
deployed) and, for the AniList rows, ``python -m tests.anilist_server --db DB`` (another),
and stops them at the end. Each client is a thread with its own ``requests.Session``
(keep-alive), sending the next request as soon as the last one is answered, for
``--duration`` seconds or ``--max-requests`` requests per endpoint, whichever comes
first; users are drawn at random (seeded). The AniList rows: "cached", every user's list
fetched once before (the cache's 10 minutes: a fan changing the filters); "live", the
service restarted with no cache, so each request is a lookup at the stand-in, at as many
clients as the service runs lookups at once (4; more are turned away with a 503 by
design, counted as errors). The direct rows call ``Recommender.recommend`` /
``recommend_for_history`` for the same kind of user, one call at a time, in this
process: what serving a request costs without HTTP, JSON and the reasons. Every answer
must be a 200 with k results; the script exits 1 otherwise. On 2 cores the clients, the
server and (for the direct rows) this process share the same cores. The last line is the
headline: each endpoint's p99 at N clients, and the overhead ratio (the API's p50 at one
client / the direct call's p50).
"""

import argparse
import sqlite3
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
from serving.lists import MAX_LOOKUPS  # noqa: E402
from tests.loopback import HangingServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("/recommend", "/recommend_for_history", "anilist", "outage")
OUTAGE_LOOKUPS = 50
ANILIST_CACHED = "POST /recommend (AniList user, cached)"
ANILIST_LIVE = "POST /recommend (AniList user, live)"


def start_server(model: str, *options: str) -> tuple[subprocess.Popen, str]:
    """The service in its own process; its first line is its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "serving.app", "--model", model, "--port", "0",
                             "--quiet", *options], cwd=ROOT, stdout=subprocess.PIPE, text=True)
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


def start_anilist(db: str) -> tuple[subprocess.Popen, str]:
    """The stand-in AniList server over ``db`` in its own process (its first line names
    its URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.anilist_server", "--db", db, "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"the stand-in AniList did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


def outage(model: str, bodies: dict, clients: int, duration: float, max_requests: int,
           k: int) -> list:
    """Rows of each endpoint at ``clients`` clients while AniList hangs (a socket that
    never answers) and OUTAGE_LOOKUPS lookups by name arrive at the start of each row's
    load: those reaching AniList end after the lookup's budget (502), the rest are
    turned away at once (503), then the breaker fails every lookup fast. The lookups'
    own row: every answer must be a 502 or a 503."""
    hanging = HangingServer()
    proc, url = start_server(model, "--anilist-endpoint", hanging.url, "--anilist-rate", "0",
                             "--lookups-per-minute", "1000000")
    rows, looked = [], []

    def lookup(i: int):
        tick = time.perf_counter()
        try:
            status = requests.post(url + "/recommend", json={"user": f"nobody{i}"}, timeout=60).status_code
        except requests.RequestException as err:
            status = type(err).__name__
        looked.append((status, time.perf_counter() - tick))

    try:
        for path, some in bodies.items():
            drive(url, path, some, 2, 1.0, 50, k)   # warm up connections
            lookups = [threading.Thread(target=lookup, args=(len(looked) + i,))
                       for i in range(OUTAGE_LOOKUPS)]
            for t in lookups:
                t.start()
            rows.append((f"{'GET' if some[0] is None else 'POST'} {path} (AniList down)", clients,
                         drive(url, path, some, clients, duration, max_requests, k)))
            for t in lookups:
                t.join()
    finally:
        stop(proc)
        hanging.close()
    statuses = [status for status, _ in looked]
    rows.append((f"POST /recommend (AniList down: {statuses.count(502)} x 502, "
                 f"{statuses.count(503)} x 503)", OUTAGE_LOOKUPS,
                 {"latencies": np.array([t for s, t in looked if s in (502, 503)]),
                  "errors": [f"lookup answered {s}" for s in statuses if s not in (502, 503)],
                  "seconds": duration * len(bodies)}))
    return rows


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


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
                    if body is None:   # a GET (/health)
                        answer = session.get(url + path, timeout=30)
                        ok = answer.status_code == 200
                    else:
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
    return (f"{name:<52}{clients:>8}{len(run['latencies']):>9}{len(run['errors']):>8}"
            f"{ms[0]:>9.1f}{ms[1]:>9.1f}{ms[2]:>9.1f}{rate:>10.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of load per endpoint and client count (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=200_000,
                        help="requests per endpoint and client count, at most (default: %(default)s)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                        help="what to load: /recommend by user_id, /recommend_for_history, "
                             "anilist (/recommend by AniList name; needs --db) (default: all)")
    parser.add_argument("--db", default="data/anirank.db",
                        help="the raw store the model was trained from, served by the stand-in "
                             "AniList for the anilist rows (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--history-users", type=int, default=300,
                        help="training users whose histories make the /recommend_for_history "
                             "bodies (default: %(default)s)")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
        parser.error("--clients and --max-requests must be >= 1, --duration > 0")

    if "anilist" in args.paths and not Path(args.db).is_file():
        parser.error(f"--db {args.db} does not exist: the anilist rows serve the model's raw "
                     "store (make run writes data/anirank.db), or leave anilist out of --paths")
    rec = Recommender.from_pretrained(args.model)
    rng = np.random.default_rng(0)
    users = rec.users["user_id"].to_numpy()
    ids = [int(u) for u in rng.choice(users, min(len(users), 2000), replace=False)]
    histories = [[[int(a), int(s)] for a, s in zip(rec.history_ids(u), rng.integers(40, 101, 10**4))]
                 for u in ids[: args.history_users]]
    histories = [h for h in histories if h]
    user_bodies = [{"user_id": u, "k": args.k} for u in ids]
    history_bodies = [{"entries": h, "k": args.k} for h in histories]
    names = []
    if "anilist" in args.paths:
        with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as conn:
            known = dict(conn.execute("SELECT user_id, name FROM users"))
        names = [{"user": known[u], "k": args.k} for u in ids[: args.history_users] if u in known]

    # Direct first (the server not yet started: this process has the cores to itself).
    rec.recommend(ids[:1], k=args.k)
    rec.recommend_for_history(histories[0], k=args.k)   # warm up (tracing, XLA per shape)
    span = min(args.duration, 10.0)
    runs = [("Recommender.recommend (direct)", 1, direct(
                lambda u: rec.recommend([u], k=args.k), ids, span, args.max_requests)),
            ("Recommender.recommend_for_history (direct)", 1, direct(
                lambda h: rec.recommend_for_history(h, k=args.k), histories, span, args.max_requests))]
    anilist = start_anilist(args.db) if names else None
    lookups = ("--anilist-endpoint", anilist[1], "--anilist-rate", "0",
               "--lookups-per-minute", "1000000") if anilist else ()
    proc, url = start_server(args.model, *lookups)
    try:
        bodies = {"/recommend": user_bodies, "/recommend_for_history": history_bodies}
        for path in [p for p in args.paths if p in bodies]:
            drive(url, path, bodies[path], 2, 2.0, 200, args.k)   # warm up connections
            # One client: the overhead against the direct call (at most 20 s: a median).
            runs.append((f"POST {path}", 1, drive(url, path, bodies[path], 1, min(args.duration, 20.0),
                                                  args.max_requests, args.k)))
            if args.clients > 1:
                runs.append((f"POST {path}", args.clients, drive(
                    url, path, bodies[path], args.clients, args.duration, args.max_requests, args.k)))
        if names:
            # Every list fetched once (one at a time: no lookup is turned away), then
            # served from the cache.
            for body in names:
                requests.post(url + "/recommend", json=body, timeout=30).raise_for_status()
            runs.append((ANILIST_CACHED, args.clients, drive(
                url, "/recommend", names, args.clients, args.duration, args.max_requests, args.k)))
        stop(proc)
        if names:   # no cache: every request a lookup at the stand-in
            proc, url = start_server(args.model, *lookups, "--cache-ttl", "0")
            drive(url, "/recommend", names, 1, 2.0, 20, args.k)
            runs.append((ANILIST_LIVE, MAX_LOOKUPS, drive(
                url, "/recommend", names, MAX_LOOKUPS, args.duration, args.max_requests, args.k)))
    finally:
        stop(proc, *([anilist[0]] if anilist else []))
    if "outage" in args.paths:
        runs += outage(args.model, {"/health": [None], "/recommend": user_bodies,
                                    "/recommend_for_history": history_bodies},
                       args.clients, args.duration, args.max_requests, args.k)

    print(f"{'path':<52}{'clients':>8}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}"
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
    down = [run["latencies"] for name, c, run in runs if name.endswith("(AniList down)")]
    if down:
        headline.append(f"p99 of the other calls during an AniList outage "
                        f"{np.percentile(np.concatenate(down), 99) * 1000:.1f} ms")
    for name, clients, run in runs:
        if name in (ANILIST_CACHED, ANILIST_LIVE) and len(run["latencies"]):
            headline.append(f"{name.split('(')[1].rstrip(')')} p99 at {clients} clients "
                            f"{np.percentile(run['latencies'], 99) * 1000:.1f} ms")
    print("; ".join(headline) + f"; {len(failures)} errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
