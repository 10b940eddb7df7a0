"""Fleet database at scale: ingest rate, and ``fleet groups`` latency over N records.

    .venv/bin/python bench/fleet.py [--records 1000000] [--hosts 1000] [--days 30]
                                    [--batch 500] [--workers 4] [--runs 20]

Starts its own PostgreSQL server (tests.support.postgres: Debian's initdb and
pg_ctl in a temporary directory, Unix socket only) with the server's defaults
except ``max_wal_size`` (the first line of the output says which), and:

1. Ingest.  ``--workers`` processes publish as ``--hosts`` simulated hosts
   (each its own machine-id and host name): a worker takes a host, makes a
   batch of ``--batch`` records of it (default: the publisher's
   :data:`~coredumpd.fleet.publisher.BATCH_SIZE`, what a drain sends) and sends
   it with :func:`coredumpd.fleet.publisher.send_batch` — the statement and the
   one transaction per batch of every publisher — on its own connection, until
   ``--records`` records are in.  Four workers by default: a fleet's hosts
   publish at once, and with two (one per CPU) the server idled while each
   worker built its next batch or waited for its commit (4,184/4,588 vs
   6,164/6,292 records/s at 40,000 records, interleaved, load 6.9-7.7; on a
   shared machine more runnable processes also take a larger share of the CPUs).
   Records are real fleet records (:func:`coredumpd.fleet.record.build_record`
   of a crash with 12 frames and 15 modules with build-ids and package notes,
   about 6 KB of JSON), one template per signature; per record the crash id,
   host, time and version are filled in.  Signatures (``--signatures``) are
   drawn with a Zipf-like weight (a few frequent crashes, a long tail), times
   uniformly over the last ``--days`` days.  The rate counts records committed
   per second of wall-clock time, generation included (it shares the 2 CPUs
   with the server: a lower bound for the server alone).  ``--steady N`` also
   measures N records sent one per transaction (one crash per drain).
2. ``VACUUM ANALYZE`` (what autovacuum does in production after a load).
3. ``fleet groups --since 1d``: the query of :func:`coredumpd.fleet.queries.groups`,
   ``--runs`` times on one connection (median, max), then the whole
   ``corectl --json fleet groups -S 1d`` command (interpreter start, connect,
   query, JSON) ``--runs`` times (median).  Targets (issue 14): >= 5,000 records/s,
   <= 200 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.provenance import measured_line
from coredumpd.fleet.publisher import BATCH_SIZE, connect, send_batch
from coredumpd.fleet.queries import groups
from coredumpd.fleet.record import FleetModule, build_record, record_json
from coredumpd.fleet.schema import SCHEMA, ensure_schema
from coredumpd.model import (
    AnalysisResult,
    Annotation,
    CrashRecord,
    Frame,
    Module,
    SignalInfo,
    Thread,
)
from tests.support.postgres import PostgresServer

SERVER_SETTINGS = {"fsync": "on", "max_wal_size": "4GB"}
DAY_US = 86_400 * 1_000_000
ROOT_CAUSES = ("null-deref", "abort-message", "stack-overflow", "crash-in-allocator",
               "bad-jump", "uncaught-exception", "general-protection", "rust-panic")
VERSIONS = ("1.0-1", "1.0-2", "1.1-1", "1.2-1", "2.0-1")
CORECTL = str(pathlib.Path(sys.executable).parent / "corectl")


def template(number: int, rng: random.Random) -> str:
    """The JSON of one signature's record, with @@ placeholders for what varies."""
    exe = f"/usr/bin/service{number % 97}"
    libs = [f"/usr/lib/x86_64-linux-gnu/lib{name}.so.{n}" for n, name in enumerate(
        ("c", "m", "ssl", "crypto", "z", "pthread", "stdc++", "gcc_s", "systemd", "lz4",
         "zstd", "lzma", "curl", "xml2"))]
    build_ids = {path: f"{rng.getrandbits(160):040x}" for path in [exe, *libs]}
    names = [f"fn_{number}_{depth}" for depth in range(10)] + ["main", "__libc_start_call_main"]
    frames = [Frame(index=i, pc=0x401000 + 16 * i, module=exe if i < 11 else libs[0],
                    build_id=build_ids[exe if i < 11 else libs[0]], offset=0x1000 + 16 * i,
                    symbol=name, symbol_offset=4, file=f"src/file{i}.c", line=100 + i,
                    trust="cfi") for i, name in enumerate(names)]
    modules = [Module(path=path, start=0x400000 * (i + 1), end=0x400000 * (i + 1) + 0x10000,
                      build_id=build_ids[path]) for i, path in enumerate([exe, *libs])]
    cause = ROOT_CAUSES[number % len(ROOT_CAUSES)]
    analysis = AnalysisResult(
        crashed_tid=1, signal=SignalInfo(signo=11, name="SIGSEGV"),
        threads=[Thread(tid=1, crashed=True, frames=frames)], modules=modules,
        annotations=[Annotation(id=cause, title=f"the {cause} rule matched", confidence="high",
                                advice="see the frames")],
        signature=f"{rng.getrandbits(160):040x}",
        signature_frames=[f"service{number % 97}!{name}" for name in names[:3]])
    crash = CrashRecord(pid=4242, timestamp_us=1111111111111111, id="@@ID@@", boot_id="b" * 32,
                        uid=1000, signal=11, comm=f"service{number % 97}", exe=exe,
                        cmdline=f"{exe} --config /etc/service.conf", unit="service.service",
                        cgroup="0::/system.slice/service.service",
                        core_path=f"/var/lib/coredumpd/core.service.1000.{'b' * 32}.4242.lz4",
                        analysis=analysis, root_cause=cause, signature=analysis.signature)
    record = build_record(crash, host="@@HOST@@", machine_id="@@MACHINE@@")
    record.modules = [FleetModule(path=m.path, build_id=m.build_id, package={
        "type": "deb", "name": os.path.basename(m.path), "version": "@@VERSION@@"})
        for m in record.modules]
    record.product_version = "@@VERSION@@"
    return record_json(record)


def make_templates(count: int) -> list[str]:
    rng = random.Random(14)
    return [template(number, rng) for number in range(count)]


def fill(text: str, crash_id: str, host: int, timestamp_us: int, version: str) -> str:
    return (text.replace("@@ID@@", crash_id).replace("@@HOST@@", f"host{host:04d}")
            .replace("@@MACHINE@@", f"{host:032x}").replace("1111111111111111", str(timestamp_us))
            .replace("@@VERSION@@", version))


TEMPLATES: list[str] = []  # made before the workers fork, outside the timed ingest


def worker(args: tuple[str, int, int, int, int, int, int, int]) -> int:
    """Publish ``count`` records as hosts ``worker_no`` + k*workers; returns records sent."""
    dsn, worker_no, workers, count, hosts, batch, days, run = args
    rng = random.Random(worker_no)
    templates = TEMPLATES
    signatures = len(templates)
    assert signatures, "make_templates() first"
    weights = [1 / (rank + 1) ** 1.1 for rank in range(signatures)]
    own_hosts = list(range(worker_no, hosts, workers))
    now_us = time.time_ns() // 1000
    conn = connect(dsn)
    sent = 0
    while sent < count:
        host = rng.choice(own_hosts)
        size = min(batch, count - sent)
        chosen = rng.choices(range(signatures), weights=weights, k=size)
        records = [fill(templates[sig], f"{run:01x}{worker_no:02x}{sent + i:09x}", host,
                        now_us - rng.randrange(days * DAY_US), rng.choice(VERSIONS))
                   for i, sig in enumerate(chosen)]
        send_batch(conn, records)
        sent += size
    conn.close()
    return sent


def ingest(dsn: str, options: argparse.Namespace, records: int, batch: int,
           run: int = 0) -> float:
    """Records/s of one ingest; ``run`` keeps each ingest's crash ids apart."""
    per_worker = [records // options.workers + (1 if n < records % options.workers else 0)
                  for n in range(options.workers)]
    jobs = [(dsn, n, options.workers, per_worker[n], options.hosts, batch, options.days, run)
            for n in range(options.workers)]
    started = time.monotonic()
    with multiprocessing.get_context("fork").Pool(options.workers) as pool:
        total = sum(pool.map(worker, jobs))
    elapsed = time.monotonic() - started
    assert total == records
    return records / elapsed


def groups_latency(dsn: str, runs: int) -> tuple[float, float, int]:
    conn = connect(dsn)
    since = time.time_ns() // 1000 - DAY_US
    times = []
    found = 0
    for _ in range(runs):
        started = time.perf_counter()
        found = len(groups(conn, since))
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return statistics.median(times), max(times), found


def corectl_latency(dsn: str, runs: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as config:
        config.write(f"[Fleet]\nDatabase={dsn}\n")
        config.flush()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run([CORECTL, "--config", config.name, "--json", "fleet",
                                   "groups", "-S", "1d"], capture_output=True, check=True)
            times.append((time.perf_counter() - started) * 1000)
            json.loads(done.stdout)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--signatures", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steady", type=int, default=0,
                        help="also send N records one per transaction")
    options = parser.parse_args()
    print(measured_line(f"PostgreSQL defaults + {SERVER_SETTINGS}; {options.records} records, "
                        f"{options.hosts} hosts, {options.signatures} signatures over "
                        f"{options.days} days, batches of {options.batch}, "
                        f"{options.workers} publishing processes"), flush=True)
    with PostgresServer(SERVER_SETTINGS) as server:
        dsn = server.dsn(server.create_database("crashes"))
        with connect(dsn) as conn:
            ensure_schema(conn)
        TEMPLATES[:] = make_templates(options.signatures)
        rate = ingest(dsn, options, options.records, options.batch)
        print(f"ingest: {rate:,.0f} records/s (batches of {options.batch})", flush=True)
        if options.steady:
            steady = ingest(dsn, options, options.steady, 1, run=1)
            print(f"ingest: {steady:,.0f} records/s (one record per transaction, "
                  f"{options.steady} records)", flush=True)
        with server.connect("crashes") as conn:
            started = time.monotonic()
            conn.execute("VACUUM ANALYZE")
            total, size, last_day = conn.execute(
                f"SELECT count(*), pg_size_pretty(pg_total_relation_size('{SCHEMA}.crashes')), "
                f"count(*) FILTER (WHERE crashed_at >= now() - interval '1 day') "
                f"FROM {SCHEMA}.crashes").fetchone() or (0, "", 0)
            print(f"table: {total:,} records, {size} with indexes; {last_day:,} in the last "
                  f"day; VACUUM ANALYZE {time.monotonic() - started:.0f} s", flush=True)
        median, worst, found = groups_latency(dsn, options.runs)
        print(f"fleet groups --since 1d (query): median {median:.1f} ms, max {worst:.1f} ms "
              f"over {options.runs} runs; {found} groups", flush=True)
        command = corectl_latency(dsn, options.runs)
        print(f"corectl --json fleet groups -S 1d (whole command): median {command:.0f} ms",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

