#!/usr/bin/env python3
"""Soak benchmark: two `doorstep serve` instances on one PostgreSQL schema, fed a steady
rate of `doorstep gen` records for MINUTES minutes, delivering to a local fake webhook
receiver. Every minute: dead tuples per table, the deliveries table's size, and the
end-to-end latency (POST sent -> first arrival at the receiver) of the deliveries that
arrived in that minute, with throughput. At the end: drain, SIGTERM, duplicate check, a
markdown table. Python 3.11, standard library only.

The deployment is a temporary folder with copies of connectors/ and mappings/ in which
each trust keeps only its webhook destinations (and the routes to them), each pointed at
the receiver (as tests/it/crash_rounds.rs does): Arbor, Wonde and Xporter need look-ups a
plain receiver cannot answer, and the CSV logs are not HTTP. The throw-away schema is
dropped at the end, on failure and on Ctrl-C (--keep leaves it, and the folder).

doorstep leaves VACUUM and ANALYZE to autovacuum. A server with autovacuum off (the CI
server's conf.d/90-ci.conf) never vacuums nor analyzes the schema: dead tuples only grow and
the planner has no statistics for the claim query (see the NOTE the run prints);
--vacuum-every 60 runs VACUUM (ANALYZE) on every table of the schema each minute instead,
1 s after each sample, so a minute's line shows a whole minute's dead tuples.

Usage: scripts/soak.py [--minutes 30] [--rate 50] [--bin PATH] [--batch 5] ...
Record content is never printed: ids, keys, counts and times only.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Every webhook destination's Standard Webhooks secret (and the receiver's).
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
SECRET_KEY = base64.b64decode(SECRET.removeprefix("whsec_"))
# The schools `doorstep gen` writes for (src/synthetic.rs).
SCHOOLS = {"thrive": ["117800"], "celt": ["136401", "136402", "136403"]}


def log(msg: str) -> None:
    print(msg, flush=True)


def now() -> float:
    return time.monotonic()


# ---- PostgreSQL ---------------------------------------------------------------------------


class Pg:
    def __init__(self, base_url: str, schema: str):
        self.base = base_url
        self.schema = schema

    def run(self, sql: str, check: bool = True) -> list[list[str]]:
        out = subprocess.run(
            ["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", self.base, "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return [line.split("\t") for line in out.stdout.splitlines() if line]

    def store_url(self) -> str:
        sep = "&" if "?" in self.base else "?"
        return f"{self.base}{sep}options=-csearch_path%3D{self.schema}"

    def create(self) -> None:
        self.run(f"CREATE SCHEMA {self.schema}")

    def drop(self) -> None:
        self.run(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE", check=False)

    def setting(self, name: str) -> str:
        rows = self.run(f"SHOW {name}", check=False)
        return rows[0][0] if rows else "?"

    def sample(self) -> dict:
        """Dead and live tuples per table, vacuum counts, the deliveries table's size and
        deliveries by state: one psql call."""
        s = self.schema
        sql = (
            "SELECT 't', relname, n_dead_tup, n_live_tup, "
            "(coalesce(vacuum_count,0) + coalesce(autovacuum_count,0)) || '/' || "
            "(coalesce(analyze_count,0) + coalesce(autoanalyze_count,0)) "
            f"FROM pg_stat_user_tables WHERE schemaname = '{s}' "
            "UNION ALL SELECT 'size', 'deliveries', "
            f"pg_total_relation_size('{s}.deliveries'), pg_relation_size('{s}.deliveries'), '' "
            "UNION ALL SELECT 'size', 'records', "
            f"pg_total_relation_size('{s}.records'), pg_relation_size('{s}.records'), '' "
            f"UNION ALL SELECT 'state', state, count(*), 0, '' FROM {s}.deliveries GROUP BY state "
            "UNION ALL SELECT 'deadlocks', datname::text, deadlocks, 0, '' FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        out = {"dead": {}, "live": {}, "vacuums": {}, "size": {}, "states": {}, "deadlocks": 0}
        for kind, name, a, b, c in self.run(sql):
            if kind == "deadlocks":
                out["deadlocks"] = int(a)
                continue
            if kind == "t":
                out["dead"][name] = int(a)
                out["live"][name] = int(b)
                out["vacuums"][name] = c
            elif kind == "size":
                out["size"][name] = (int(a), int(b))
            else:
                out["states"][name] = int(a)
        return out

    def vacuum(self) -> None:
        tables = [r[0] for r in self.run(
            f"SELECT relname FROM pg_stat_user_tables WHERE schemaname = '{self.schema}'")]
        for t in tables:
            self.run(f"VACUUM (ANALYZE) {self.schema}.{t}", check=False)


# ---- The fake receiver --------------------------------------------------------------------


class Receiver:
    """Answers every POST 200 after `delay` seconds; keeps, per Idempotency-Key, each
    arrival's time and body hash and the record it carries."""

    def __init__(self, delay: float):
        self.delay = delay
        self.lock = threading.Lock()
        # key -> {"first": t, "n": count, "bodies": set(sha256), "rec": (trust, id, rev), "dest": path}
        self.keys: dict[str, dict] = {}
        # (first arrival time, record key, dest) in arrival order, for the minute windows
        self.firsts: list[tuple[float, tuple, str]] = []
        self.records_seen: set[tuple] = set()
        self.requests = 0
        self.bad_signatures = 0
        self.no_key = 0
        self.key_mismatch = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                t = now()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                time.sleep(receiver.delay)
                receiver.take(self.path, self.headers, body, t)
                answer = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, path: str, headers, body: bytes, t: float) -> None:
        key = headers.get("Idempotency-Key")
        wid = headers.get("webhook-id")
        ts = headers.get("webhook-timestamp") or ""
        sig = headers.get("webhook-signature") or ""
        good = False
        if wid:
            mac = hmac.new(SECRET_KEY, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
            want = "v1," + base64.b64encode(mac).decode()
            good = any(hmac.compare_digest(want, s) for s in sig.split())
        try:
            doc = json.loads(body)
            rec_id, rev = doc.get("record_id"), doc.get("revision")
        except ValueError:
            rec_id, rev = None, None
        trust = path.strip("/").split("/")[0]
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            self.requests += 1
            if not good:
                self.bad_signatures += 1
            if not key:
                self.no_key += 1
                return
            if wid != key:
                self.key_mismatch += 1
            rec = (trust, rec_id, rev)
            k = self.keys.get(key)
            if k is None:
                self.keys[key] = {"first": t, "n": 1, "bodies": {digest}, "rec": rec, "dest": path}
                self.firsts.append((t, rec, path))
                self.records_seen.add(rec)
            else:
                k["n"] += 1
                k["bodies"].add(digest)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- The deployment -----------------------------------------------------------------------


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v)}")


def toml_dump(table: dict, prefix: str = "") -> str:
    """A small TOML writer: enough for routes.toml (tables, arrays of tables, scalars)."""
    out = []
    subtables = []
    for k, v in table.items():
        if isinstance(v, dict):
            subtables.append(("t", k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            subtables.append(("a", k, v))
        else:
            out.append(f"{toml_key(k)} = {toml_value(v)}")
    text = "\n".join(out) + ("\n" if out else "")
    for kind, k, v in subtables:
        name = f"{prefix}.{toml_key(k)}" if prefix else toml_key(k)
        if kind == "t":
            text += f"\n[{name}]\n" + toml_dump(v, name)
        else:
            for item in v:
                text += f"\n[[{name}]]\n" + toml_dump(item, name)
    return text


def webhooks_only(path: Path) -> tuple[list[str], list[str]]:
    """Rewrites a trust's routes.toml keeping only its webhook destinations and the routes
    to them; returns their names and the environment variables of their secrets."""
    routes = tomllib.loads(path.read_text())
    dests = {n: d for n, d in routes.get("destinations", {}).items() if d.get("connector") == "webhook"}
    envs = [s["env"] for d in dests.values() for s in d.get("secrets", []) if "env" in s]
    routes["destinations"] = dests
    routes["route"] = [r for r in routes.get("route", []) if r.get("to") in dests]
    if not dests:
        raise RuntimeError(f"{path}: no webhook destination")
    path.write_text(toml_dump(routes))
    return sorted(dests), envs


class Deployment:
    def __init__(self, bin_path: str, pg: Pg, receiver_port: int, lease: int, dir_: Path):
        self.bin = bin_path
        self.pg = pg
        self.dir = dir_
        shutil.copytree(REPO / "connectors", dir_ / "connectors")
        shutil.copytree(REPO / "mappings", dir_ / "mappings")
        self.env = dict(os.environ)
        self.env.pop("DOORSTEP_CONFIG", None)
        self.destinations = []
        overrides = ""
        for trust in SCHOOLS:
            names, envs = webhooks_only(dir_ / "mappings" / trust / "routes.toml")
            for e in envs:
                self.env[e] = SECRET
            for n in names:
                self.destinations.append(f"{trust}/{n}")
                overrides += (f"[destinations.{trust}.{n}]\n"
                              f"url = \"http://127.0.0.1:{receiver_port}/{trust}/{n}\"\n")
        for folder in ["drop", "archive", "rejected", "keys", "logs", "out"]:
            (dir_ / folder).mkdir()
        self.config = dir_ / "doorstep.toml"
        self.config.write_text(
            'connectors = "connectors"\nmappings = "mappings"\n'
            f"[store]\npostgres = {json.dumps(pg.store_url())}\nlease_seconds = {lease}\n"
            '[intake]\ndrop = "drop"\narchive = "archive"\nrejected = "rejected"\n'
            '[audit]\nsigning_key = { file = "keys/log.key" }\n'
            '[delivery]\nout = "out"\n' + overrides
        )

    def cmd(self, verb: str, *args: str) -> list[str]:
        return [self.bin, *verb.split(), "--config", str(self.config), *args]

    def run(self, verb: str, *args: str) -> str:
        out = subprocess.run(self.cmd(verb, *args), cwd=self.dir, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"doorstep {verb} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def api_key(self, trust: str) -> str:
        args = ["--trust", trust, "--name", f"soak-{trust}", "--format", "json"]
        for school in SCHOOLS[trust]:
            args += ["--school", school]
        out = self.run("keys create", *args)
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("{"):
                key = json.loads(line).get("key")
                if key:
                    return key
        m = re.search(r"dsk_[A-Za-z0-9_]+", out)
        if not m:
            raise RuntimeError("keys create printed no key")
        return m.group(0)


class Instance:
    def __init__(self, dep: Deployment, name: str):
        self.name = name
        self.log_path = dep.dir / "logs" / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(dep.cmd("serve", "--listen", "127.0.0.1:0"), cwd=dep.dir,
                                     env=dep.env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.host, self.port = None, None
        until = now() + 30
        while now() < until:
            m = re.search(rb"listening on http://([0-9.]+):(\d+)", self.log_path.read_bytes())
            if m:
                self.host, self.port = m.group(1).decode(), int(m.group(2))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.port is None:
            raise RuntimeError(f"{name} did not start listening:\n{self.tail()}")
        self.exit_code = None

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def warnings(self) -> list[str]:
        """The log's WARN and ERROR lines (ids and rules only: doorstep logs no content)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(r"\s(WARN|ERROR)\s", line)]

    def ready(self, timeout: float = 30) -> None:
        until = now() + timeout
        while now() < until:
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=5)
                c.request("GET", "/readyz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")

    def proc_stats(self) -> tuple[float, float]:
        """(RSS in MiB, CPU seconds used) from /proc."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return rss, cpu
        except (OSError, AttributeError, IndexError, ValueError):
            return 0.0, 0.0

    def metric(self, name: str) -> list[str]:
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=10)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
        except OSError:
            return []
        return [line for line in text.splitlines() if line.startswith(name)]

    def terminate(self, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.exit_code = None
        return self.exit_code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


# ---- Posting ------------------------------------------------------------------------------


class Poster:
    """Posts small arrays of records; keeps each record's post time by (trust, id, revision)
    and the outcomes the instances answered."""

    def __init__(self, instances: list[Instance], keys: dict[str, str], workers: int):
        self.instances = instances
        self.keys = keys
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.post_time: dict[tuple, float] = {}
        self.outcomes = collections.Counter()
        self.statuses = collections.Counter()
        self.failures: list[str] = []
        self.accepted: set[tuple] = set()
        self.answer_times: list[tuple[float, float]] = []  # (answered at, seconds taken)
        self.in_flight = 0
        self.sent_records = 0

    def conn(self, inst: Instance) -> http.client.HTTPConnection:
        conns = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        c = conns.get(inst.port)
        if c is None:
            c = conns[inst.port] = http.client.HTTPConnection(inst.host, inst.port, timeout=60)
        return c

    def submit(self, inst: Instance, trust: str, records: list[dict]) -> None:
        t = now()
        with self.lock:
            for r in records:
                self.post_time.setdefault((trust, r["id"], r["revision"]), t)
            self.in_flight += 1
            self.sent_records += len(records)
        self.pool.submit(self._post, inst, trust, records, t)

    def _post(self, inst: Instance, trust: str, records: list[dict], t: float) -> None:
        body = json.dumps(records).encode()
        headers = {"Authorization": f"Bearer {self.keys[trust]}", "Content-Type": "application/json"}
        status, answer, err = None, None, None
        for attempt in range(2):
            c = self.conn(inst)
            try:
                c.request("POST", "/v1/records", body=body, headers=headers)
                r = c.getresponse()
                status, answer = r.status, r.read()
                break
            except (OSError, http.client.HTTPException) as e:
                err = f"{type(e).__name__}: {e}"
                c.close()
                self.local.conns.pop(inst.port, None)
        done = now()
        with self.lock:
            self.in_flight -= 1
            self.answer_times.append((done, done - t))
            if status is None:
                self.statuses["error"] += 1
                self.failures.append(f"{inst.name}: {err}")
                return
            self.statuses[status] += 1
            try:
                lines = json.loads(answer).get("records") or []
            except ValueError:
                lines = []
            if not lines:
                self.failures.append(f"{inst.name}: HTTP {status} without outcomes")
            for line in lines:
                self.outcomes[line.get("outcome")] += 1
                rec = (trust, line.get("record_id"), line.get("revision"))
                if line.get("outcome") in ("accepted", "unchanged"):
                    self.accepted.add(rec)
                elif len(self.failures) < 50:
                    rules = ",".join(e.get("rule", "?") for e in line.get("errors", []))
                    self.failures.append(f"{inst.name}: {rec[1]} r{rec[2]} {line.get('outcome')} {rules}")

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def gen_records(bin_path: str, count: int, seed: int):
    """`doorstep gen` as a stream of parsed records."""
    proc = subprocess.Popen([bin_path, "gen", "--count", str(count), "--seed", str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            line = line.strip()
            if line:
                yield json.loads(line)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---- Statistics ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[i]


def ms(x: float) -> str:
    return "–" if x != x else f"{x * 1000:.0f}"


class Sampler:
    def __init__(self, pg: Pg, receiver: Receiver, poster: Poster, instances: list[Instance], t0: float):
        self.pg, self.rx, self.poster, self.instances = pg, receiver, poster, instances
        self.t0 = t0
        self.rows: list[dict] = []
        self.last_t = t0
        self.firsts_seen = 0
        self.answers_seen = 0
        self.sent_seen = 0
        self.cpu_last = [i.proc_stats()[1] for i in instances]
        self.deadlocks = pg.sample()["deadlocks"]
        self.warn_seen = [0 for _ in instances]

    def sample(self, label: str) -> dict:
        t = now()
        with self.rx.lock:
            new = self.rx.firsts[self.firsts_seen:]
            self.firsts_seen = len(self.rx.firsts)
        with self.poster.lock:
            answers = self.poster.answer_times[self.answers_seen:]
            self.answers_seen = len(self.poster.answer_times)
            sent = self.poster.sent_records - self.sent_seen
            self.sent_seen = self.poster.sent_records
            lat = [at - self.poster.post_time[rec] for at, rec, _ in new if rec in self.poster.post_time]
        unknown = len(new) - len(lat)
        span = max(t - self.last_t, 1e-9)
        try:
            db = self.pg.sample()
        except Exception as e:  # noqa: BLE001 - a sample lost is reported, the run goes on
            log(f"  (sample: psql failed: {e})")
            db = {"dead": {}, "live": {}, "vacuums": {}, "size": {}, "states": {}, "deadlocks": self.deadlocks}
        stats = [i.proc_stats() for i in self.instances]
        cpu = [(c - last) / span * 100 for (_, c), last in zip(stats, self.cpu_last)]
        self.cpu_last = [c for _, c in stats]
        not_done = sum(n for s, n in db["states"].items() if s != "delivered")
        deadlocks = db["deadlocks"] - self.deadlocks
        self.deadlocks = db["deadlocks"]
        warns = []
        for j, inst in enumerate(self.instances):
            n = len(inst.warnings())
            warns.append(n - self.warn_seen[j])
            self.warn_seen[j] = n
        row = {
            "label": label,
            "t": t - self.t0,
            "posted_per_s": sent / span,
            "arrived": len(new),
            "arrived_per_s": len(new) / span,
            "p50": pct(lat, 50),
            "p95": pct(lat, 95),
            "max": max(lat) if lat else float("nan"),
            "post_p95": pct([d for _, d in answers], 95),
            "unknown": unknown,
            "dead": db["dead"],
            "vacuums": db["vacuums"],
            "live_deliveries": db["live"].get("deliveries", 0),
            "deliveries_bytes": db["size"].get("deliveries", (0, 0))[0],
            "records_bytes": db["size"].get("records", (0, 0))[0],
            "not_delivered": not_done,
            "states": db["states"],
            "rss": [r for r, _ in stats],
            "cpu": cpu,
            "deadlocks": deadlocks,
            "warns": warns,
        }
        self.last_t = t
        self.rows.append(row)
        dead = db["dead"]
        others = sum(v for k, v in dead.items() if k not in ("deliveries", "records"))
        log(
            f"[{label:>5}] t={row['t']:6.0f}s posted {row['posted_per_s']:5.1f}/s "
            f"arrived {row['arrived_per_s']:5.1f}/s  e2e p50 {ms(row['p50'])} p95 {ms(row['p95'])} "
            f"max {ms(row['max'])} ms  POST p95 {ms(row['post_p95'])} ms | dead: deliveries "
            f"{dead.get('deliveries', 0)} records {dead.get('records', 0)} other {others} | "
            f"deliveries {row['live_deliveries']} rows {row['deliveries_bytes'] / 2**20:.1f} MiB, "
            f"not delivered {not_done} | RSS {'/'.join(f'{r:.0f}' for r in row['rss'])} MiB "
            f"CPU {'/'.join(f'{c:.0f}' for c in cpu)}% | deadlocks {deadlocks}, WARN/ERROR lines "
            f"{'/'.join(str(w) for w in warns)}"
        )
        return row

    def markdown(self) -> str:
        head = ("| min | records posted/s | deliveries arrived/s | e2e p50 ms | e2e p95 ms | e2e max ms | POST p95 ms "
                "| dead tuples deliveries | dead tuples records | dead tuples other tables "
                "| deliveries table MiB | not delivered | RSS MiB (a/b) | deadlocks |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in self.rows:
            dead = r["dead"]
            others = sum(v for k, v in dead.items() if k not in ("deliveries", "records"))
            lines.append(
                f"| {r['label']} | {r['posted_per_s']:.1f} | {r['arrived_per_s']:.1f} | {ms(r['p50'])} "
                f"| {ms(r['p95'])} | {ms(r['max'])} | {ms(r['post_p95'])} | {dead.get('deliveries', 0)} "
                f"| {dead.get('records', 0)} | {others} | {r['deliveries_bytes'] / 2**20:.1f} "
                f"| {r['not_delivered']} | {'/'.join(f'{x:.0f}' for x in r['rss'])} | {r['deadlocks']} |"
            )
        return "\n".join(lines)


# ---- The run ------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=50, help="records a second")
    ap.add_argument("--bin", default=os.environ.get("DOORSTEP_BIN", "/work/bench/target/release/doorstep"))
    ap.add_argument("--pg", default=os.environ.get("DOORSTEP_PG_URL", "postgres://root@127.0.0.1:5432/test"),
                    help="server URL (a throw-away schema is made in it)")
    ap.add_argument("--batch", type=int, default=5, help="records per tick (a tick is batch/rate s)")
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--lease", type=int, default=10, help="[store] lease_seconds")
    ap.add_argument("--sample-seconds", type=float, default=60)
    ap.add_argument("--drain-seconds", type=float, default=120)
    ap.add_argument("--receiver-delay-ms", type=float, default=5)
    ap.add_argument("--vacuum-every", type=float, default=0,
                    help="run VACUUM (ANALYZE) on the schema's tables this often (s), standing "
                         "in for autovacuum and autoanalyze where the server has them off; 0: never")
    ap.add_argument("--keep", action="store_true", help="keep the schema and the folder")
    ap.add_argument("--markdown", help="also write the final table to this file")
    args = ap.parse_args()

    if not os.access(args.bin, os.X_OK):
        log(f"soak: no doorstep binary at {args.bin} (DOORSTEP_BIN)")
        return 2
    schema = f"soak_{os.getpid()}_{int(time.time())}"
    pg = Pg(args.pg, schema)
    folder = Path(tempfile.mkdtemp(prefix="doorstep-soak-"))
    instances: list[Instance] = []
    receiver = None
    poster = None
    stop = threading.Event()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    total = int(args.minutes * 60 * args.rate)
    try:
        log(f"soak: {args.minutes:g} min at {args.rate:g} records/s ({total} records), batches of "
            f"{args.batch}, two instances, schema {schema}, folder {folder}")
        log(f"soak: binary {args.bin}; nproc {os.cpu_count()}, {os.uname().machine}; "
            f"server {pg.run('SHOW server_version')[0][0]}, autovacuum "
            f"{pg.setting('autovacuum')}, vacuum-every {args.vacuum_every:g}")
        if pg.setting("autovacuum") != "on" and not args.vacuum_every:
            log("soak: NOTE the server has autovacuum off: no VACUUM and no ANALYZE will run, so "
                "dead tuples can only grow and the planner has no statistics (--vacuum-every 60 "
                "stands in for autovacuum)")
        pg.create()
        receiver = Receiver(args.receiver_delay_ms / 1000)
        dep = Deployment(args.bin, pg, receiver.port, args.lease, folder)
        dep.run("audit keygen", "--name", "soak.example", "--out", "keys/log.key")
        dep.run("config check")
        dep.run("migrate")
        log(f"soak: destinations {', '.join(dep.destinations)} -> receiver on port {receiver.port}")
        instances = [Instance(dep, "a"), Instance(dep, "b")]
        for i in instances:
            i.ready()
        keys = {trust: dep.api_key(trust) for trust in SCHOOLS}
        log(f"soak: instances on ports {instances[0].port} and {instances[1].port}; keys made")
        poster = Poster(instances, keys, workers=8)

        t0 = now()
        sampler = Sampler(pg, receiver, poster, instances, t0)

        def sampling():
            n = 1
            while not stop.wait(max(0.0, t0 + n * args.sample_seconds - now())):
                sampler.sample(f"{n * args.sample_seconds / 60:g}")
                n += 1

        def vacuuming():
            # On a fixed schedule, 1 s after each sample: a minute's line shows the dead
            # tuples of a whole period, just before they are vacuumed.
            k = 1
            while not stop.wait(max(0.0, t0 + k * args.vacuum_every + 1 - now())):
                pg.vacuum()
                k += 1

        threading.Thread(target=sampling, daemon=True).start()
        if args.vacuum_every:
            threading.Thread(target=vacuuming, daemon=True).start()

        # Post: `batch` records every batch/rate seconds, grouped by trust, the instances
        # taking turns tick by tick.
        tick = args.batch / args.rate
        records = gen_records(args.bin, total, args.seed)
        end = t0 + args.minutes * 60
        n_tick = 0
        lagging = 0
        while True:
            due = t0 + n_tick * tick
            if due >= end:
                break
            wait = due - now()
            if wait > 0:
                time.sleep(wait)
            elif wait < -1:
                lagging += 1
            batch = []
            for _ in range(args.batch):
                r = next(records, None)
                if r is None:
                    break
                batch.append(r)
            if not batch:
                break
            inst = instances[n_tick % 2]
            by_trust = collections.defaultdict(list)
            for r in batch:
                by_trust[r["trust"]].append(r)
            for trust, recs in by_trust.items():
                poster.submit(inst, trust, recs)
            n_tick += 1
        records.close()
        posting_ended = now()
        log(f"soak: posting stopped after {posting_ended - t0:.0f} s, {poster.sent_records} records "
            f"sent; waiting for the answers and deliveries (up to {args.drain_seconds:g} s)")
        poster.close()

        # Drain: every accepted record has reached the receiver and the store has nothing
        # left to deliver.
        drain_until = now() + args.drain_seconds
        while now() < drain_until:
            with receiver.lock:
                missing = poster.accepted - receiver.records_seen
            states = pg.sample()["states"]
            not_done = sum(n for s, n in states.items() if s != "delivered")
            if not missing and not_done == 0:
                break
            time.sleep(1)
        drained = now() - posting_ended
        stop.set()
        sampler.sample("end")

        metrics_dead = instances[0].metric("doorstep_store_dead_tuples")
        stopping = now()
        exits = [(i.name, i.terminate()) for i in instances]
        stopped = now()

        # Totals and checks.
        with receiver.lock:
            missing = poster.accepted - receiver.records_seen
            keys_seen = len(receiver.keys)
            dup_keys = sum(1 for k in receiver.keys.values() if k["n"] > 1)
            extra_arrivals = sum(k["n"] - 1 for k in receiver.keys.values())
            two_bodies = [key for key, k in receiver.keys.items() if len(k["bodies"]) > 1]
            requests = receiver.requests
            bad_sig = receiver.bad_signatures
            unposted = {k["rec"] for k in receiver.keys.values()} - set(poster.post_time)
        stored_keys = {r[0]: r[1] for r in pg.run(f"SELECT idempotency_key, state FROM {schema}.deliveries")}
        never_arrived = [k for k, s in stored_keys.items() if s == "delivered" and k not in receiver.keys]
        unknown_keys = [k for k in receiver.keys if k not in stored_keys]
        states = collections.Counter(stored_keys.values())
        all_lat = [k["first"] - poster.post_time[k["rec"]] for k in receiver.keys.values()
                   if k["rec"] in poster.post_time]
        final = pg.sample()

        log("")
        log("## Per minute")
        log("")
        table = sampler.markdown()
        log(table)
        log("")
        log("## Dead tuples by table (last sample), vacuums/analyzes run")
        log("")
        log("| table | live | dead | vacuums/analyzes |\n|---|---|---|---|")
        for t in sorted(final["dead"], key=lambda k: -final["dead"][k]):
            log(f"| {t} | {final['live'].get(t, 0)} | {final['dead'][t]} | {final['vacuums'].get(t, '0/0')} |")
        log("")
        log("## Totals")
        log("")
        log(f"- records sent {poster.sent_records}, outcomes {dict(poster.outcomes)}, HTTP statuses "
            f"{dict(poster.statuses)}; posting ran {posting_ended - t0:.0f} s (ticks late by >1 s: {lagging})")
        log(f"- deliveries in the store {len(stored_keys)} by state {dict(states)}; the receiver got "
            f"{requests} requests for {keys_seen} idempotency keys")
        log(f"- drained {drained:.1f} s after posting stopped; accepted records not arrived: "
            f"{len(missing)}; delivered keys that never arrived: {len(never_arrived)}; keys the store "
            f"does not know: {len(unknown_keys)}; arrivals of records never posted: {len(unposted)}")
        log(f"- duplicates: {dup_keys} keys arrived more than once ({extra_arrivals} extra arrivals); "
            f"keys with two different bodies: {len(two_bodies)}; bad signatures: {bad_sig}")
        log(f"- end-to-end latency over the run ({len(all_lat)} deliveries): p50 {ms(pct(all_lat, 50))} "
            f"p95 {ms(pct(all_lat, 95))} p99 {ms(pct(all_lat, 99))} max {ms(max(all_lat) if all_lat else float('nan'))} ms")
        log(f"- SIGTERM: exit codes {exits}, both stopped in {stopped - stopping:.1f} s; /metrics dead tuples before "
            f"stop: {'; '.join(metrics_dead) or 'none'}")
        if poster.failures:
            log(f"- first refusals/failures: {poster.failures[:10]}")
        if two_bodies:
            log(f"- keys with two bodies (first 10): {two_bodies[:10]}")
        log(f"- deadlocks in database {pg.base.rsplit('/', 1)[-1].split('?')[0]} during the run "
            f"(pg_stat_database, counts any client): {sum(r['deadlocks'] for r in sampler.rows)}")
        for i in instances:
            errs = i.warnings()
            kinds = collections.Counter(
                re.sub(r"^\S+\s+", "", re.sub(r"\d+", "N", line))[:160] for line in errs)
            log(f"- instance {i.name}: {len(errs)} WARN/ERROR log lines")
            for text, n in kinds.most_common(8):
                log(f"    {n} x {text}")
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
        ok = (not missing and not never_arrived and not unknown_keys and not two_bodies
              and all(code == 0 for _, code in exits))
        log(f"soak: {'OK' if ok else 'PROBLEMS (see above)'}")
        return 0 if ok else 1
    except KeyboardInterrupt:
        log("soak: interrupted")
        return 130
    except Exception as e:
        log(f"soak: FAILED: {e}")
        for i in instances:
            log(f"---- instance {i.name}, last lines:\n{i.tail()}")
        return 1
    finally:
        stop.set()
        for i in instances:
            i.kill()
        if poster is not None:
            poster.pool.shutdown(wait=False, cancel_futures=True)
        if receiver is not None:
            receiver.stop()
        if args.keep:
            log(f"soak: kept schema {schema} and folder {folder}")
        else:
            pg.drop()
            shutil.rmtree(folder, ignore_errors=True)
            log(f"soak: dropped schema {schema}, removed {folder}")


if __name__ == "__main__":
    sys.exit(main())
