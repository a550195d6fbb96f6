"""Soak: `asyncsync serve` as a real process against the bundled simulator (its own
process, soak_sim.py) and a PostgreSQL of its own, with the faults the tests take one at a
time taken together. Re-runnable:

    .venv/bin/python bench/soak.py [--scale 1.0] [--orders 1000] [--out DIR]

About 14 minutes at scale 1 (0.2: about 3). It needs PostgreSQL's server programs
(initdb, pg_ctl) on the PATH or where tests/faults/conftest.py finds them. It prints a
timeline while it runs and writes DIR/result.json (figures, checks, every poll) and
DIR/serve-*.log (serve's JSON logs), DIR by default bench/results/soak. Exit 0 when
every check held. Too slow for CI: the fault tests take these faults one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from tests.faults.conftest import OwnPostgres  # noqa: E402

PY = sys.executable  # the interpreter running the soak: the project's environment
OPEN = {0, 1, 2, 5, 6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ts(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.t0 = time.monotonic()
        self.state: dict[str, Any] = {"db": "up", "tiny": None, "serve": "down", "phase": "start"}
        self.timeline: list[dict[str, Any]] = []
        self.http_polls: list[dict[str, Any]] = []
        self.cli_polls: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []  # {what, start, end} in UTC
        self.serve: asyncio.subprocess.Process | None = None
        self.serve_n = 0
        self.serve_logs: list[Path] = []
        self.done = asyncio.Event()

    # --- helpers ----------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def note(self, what: str, **extra: Any) -> None:
        entry = {"t": self.now(), "at": utcnow().isoformat(), "what": what, **extra}
        self.timeline.append(entry)
        print(f"[{entry['t']:7.1f}] {what} {extra if extra else ''}", flush=True)

    def set_state(self, key: str, value: Any) -> None:
        self.state[key] = value
        self.state[f"{key}_since"] = time.monotonic()
        self.note(f"{key} -> {value}")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.args.scale)

    async def control(self, body: dict[str, Any]) -> None:
        async with self.http.post(f"{self.sim_origin}/_sim/control", json=body) as r:
            assert r.status == 200, await r.text()

    async def churn(self, every_s: float) -> None:
        async with self.http.post(f"{self.ctl}/soak/churn", json={"every_s": every_s}) as r:
            assert r.status == 200

    async def truth(self) -> dict[str, Any]:
        async with self.http.get(f"{self.ctl}/soak/truth") as r:
            return await r.json()

    async def sim_stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.sim_origin}/_sim/stats") as r:
            return await r.json()

    async def wait_requests_flowing(self, endpoint: str = "list", timeout: float = 120) -> bool:
        """Until the simulator saw `endpoint` requests within the last second (mid-cycle)."""
        end = time.monotonic() + timeout
        before = (await self.sim_stats())["requests_by_endpoint"].get(endpoint, 0)
        while time.monotonic() < end:
            await asyncio.sleep(0.3)
            now = (await self.sim_stats())["requests_by_endpoint"].get(endpoint, 0)
            if now > before:
                return True
            before = now
        return False

    async def wait_quiet(self, quiet_s: float = 2.0, timeout: float = 120) -> bool:
        """Until the simulator saw no API request for `quiet_s` (between cycles)."""
        end = time.monotonic() + timeout
        last = (await self.sim_stats())["requests_total"]
        since = time.monotonic()
        while time.monotonic() < end:
            await asyncio.sleep(0.25)
            now = (await self.sim_stats())["requests_total"]
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return True
        return False

    # --- processes --------------------------------------------------------------------

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
        env.pop("DATABASE_URL", None)
        env["DATABASE_URL"] = self.dsn
        return env

    async def start_serve(self) -> None:
        self.serve_n += 1
        log = self.out / f"serve-{self.serve_n}.log"
        self.serve_logs.append(log)
        env = self.cli_env()
        env.update(TINY_CLIENT_ID=self.creds["client_id"],
                   TINY_CLIENT_SECRET=self.creds["client_secret"],
                   TINY_REFRESH_TOKEN=self.creds["refresh_token"])  # fmt: skip
        a = self.args
        self.serve = await asyncio.create_subprocess_exec(
            PY, "-m", "asyncsync", "serve",
            "--api-base-url", self.creds["base_url"], "--token-url", self.creds["token_url"],
            "--interval", str(a.interval), "--metrics-port", str(self.metrics_port),
            "--timeout", "8", "--breaker-cooldown", str(a.breaker_cooldown),
            "--statement-timeout", str(a.statement_timeout), "--lock-timeout", "5",
            "--db-reconnect", "10", "--sweep-interval", str(a.sweep_interval),
            "--data-dir", str(self.out / "data"), "--log-format", "json",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
        )  # fmt: skip
        self.set_state("serve", "up")

    async def kill_serve(self, sig: int) -> int | None:
        assert self.serve is not None
        self.set_state("serve", "stopping")  # a poll in flight now judges no running serve
        self.serve.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.serve.wait(), 60)
        except TimeoutError:
            self.serve.kill()
            code = await self.serve.wait()
        self.set_state("serve", "down")
        self.note("serve exited", code=code)
        return code

    # --- pollers ----------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "db": self.state["db"], "db_for": round(now - self.state.get("db_since", self.t0), 1),
            "tiny": self.state["tiny"],
            "tiny_for": round(now - self.state.get("tiny_since", self.t0), 1),
            "serve": self.state["serve"],
            "serve_for": round(now - self.state.get("serve_since", self.t0), 1),
            "phase": self.state["phase"],
        }  # fmt: skip

    async def poll_http(self) -> None:
        base = f"http://127.0.0.1:{self.metrics_port}"
        timeout = aiohttp.ClientTimeout(total=3)
        while not self.done.is_set():
            entry: dict[str, Any] = {"t": self.now(), "at": utcnow().isoformat(),
                                     **self.snapshot_state()}  # fmt: skip
            for path in ("healthz", "readyz"):
                try:
                    async with self.http.get(f"{base}/{path}", timeout=timeout) as r:
                        entry[path] = [r.status, (await r.text())[:300]]
                except (aiohttp.ClientError, TimeoutError) as exc:
                    entry[path] = [None, type(exc).__name__]
            if self.state["serve"] != entry["serve"]:  # serve stopped or started meanwhile
                entry["serve"] = f"{entry['serve']} -> {self.state['serve']}"
            self.http_polls.append(entry)
            await asyncio.sleep(1.0)

    async def run_cli(self, *args: str, timeout: float = 40) -> tuple[int | None, str, float]:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "asyncsync", *args, env=self.cli_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            return None, "TIMEOUT " + (out + err).decode()[-500:], time.monotonic() - started
        text = out.decode().strip() + ("\n" + err.decode().strip() if err.strip() else "")
        return proc.returncode, text, time.monotonic() - started

    async def poll_cli(self) -> None:
        while not self.done.is_set():
            before = self.snapshot_state()
            at = utcnow().isoformat()
            hc, hout, hdur = await self.run_cli("health", "--interval", str(self.args.interval))
            sc, sout, sdur = await self.run_cli(
                "status", "--json", "--interval", str(self.args.interval), "--log-format", "json"
            )  # fmt: skip
            status: Any = None
            with contextlib.suppress(ValueError):
                status = json.loads(sout.splitlines()[0]) if sout else None
            self.cli_polls.append({
                "t": self.now(), "at": at, **before, "after": self.snapshot_state(),
                "health": [hc, hout[-400:], round(hdur, 1)],
                "status": [sc, status if status else sout[-600:], round(sdur, 1)],
            })  # fmt: skip
            await asyncio.sleep(10.0)

    # --- the scenario -----------------------------------------------------------------

    async def fault(self, what: str, start: dt.datetime) -> None:
        self.faults.append({"what": what, "start": start.isoformat(), "end": utcnow().isoformat()})

    async def db_stop(self, seconds: float, what: str) -> None:
        start = utcnow()
        await asyncio.to_thread(self.pg.stop)
        self.set_state("db", "down")
        await self.sleep(seconds)
        await asyncio.to_thread(self.pg.start)
        self.set_state("db", "up")
        await self.fault(what, start)

    async def db_freeze(self, seconds: float) -> None:
        start = utcnow()
        self.pg.freeze()
        self.set_state("db", "frozen")
        await self.sleep(seconds)
        self.pg.thaw()
        self.set_state("db", "up")
        await self.fault(f"PostgreSQL SIGSTOP {seconds:.0f} s", start)

    async def tiny_outage(self, mode: str, seconds: float) -> None:
        start = utcnow()
        await self.control({"outage": mode})
        self.set_state("tiny", mode)
        await self.sleep(seconds)
        await self.control({"outage": None})
        self.set_state("tiny", None)
        await self.fault(f"Tiny {mode} {seconds:.0f} s", start)

    async def scenario(self) -> None:
        a = self.args
        self.state["phase"] = "first sync"
        await self.start_serve()
        await self.sleep(25)
        self.state["phase"] = "churn"
        await self.churn(a.churn_every)
        self.note("churn on", every_s=a.churn_every)
        await self.sleep(35)
        # quota below demand: the plan drops to a third (from the next window)
        await self.control({"rate_limit": max(a.quota // 3, 30)})
        self.note("quota lowered", to=max(a.quota // 3, 30))
        await self.sleep(20)
        await self.tiny_outage("503", 25)  # a 503 burst
        await self.sleep(30)
        self.note("waiting for a quiet moment (between cycles)")
        await self.wait_quiet(1.5)
        await self.db_stop(12, "PostgreSQL stopped between cycles 12 s")
        await self.sleep(30)
        await self.control({"rate_limit": a.quota})
        self.note("quota restored", to=a.quota)
        self.note("waiting for a listing (mid-cycle)")
        await self.wait_requests_flowing("list")
        await self.db_stop(20, "PostgreSQL stopped mid-cycle 20 s")
        await self.sleep(40)
        await self.tiny_outage("hang", 40)  # requests hang (timeout 8 s)
        await self.sleep(30)
        self.note("waiting for a listing to SIGKILL serve mid-cycle")
        await self.wait_requests_flowing("list")
        start = utcnow()
        await self.kill_serve(signal.SIGKILL)
        await self.sleep(8)
        await self.start_serve()
        await self.fault("serve SIGKILLed, restarted 8 s later", start)
        await self.sleep(50)
        self.note("waiting for traffic to freeze PostgreSQL under it")
        await self.wait_requests_flowing("detail")
        await self.db_freeze(a.statement_timeout * 4)
        await self.sleep(40)
        # Tiny and PostgreSQL away together, and the access tokens revoked meanwhile
        start = utcnow()
        await self.control({"outage": "reset"})
        self.set_state("tiny", "reset")
        await asyncio.to_thread(self.pg.stop)
        self.set_state("db", "down")
        await self.sleep(15)
        await self.control({"expire_access_tokens": True, "outage": None})
        self.set_state("tiny", None)
        await asyncio.to_thread(self.pg.start)
        self.set_state("db", "up")
        await self.fault("Tiny resets + PostgreSQL stopped together 15 s", start)
        await self.sleep(30)
        await self.control({"rate_limit": max(a.quota // 4, 30)})
        self.note("quota lowered", to=max(a.quota // 4, 30))
        await self.tiny_outage("503", 15)
        await self.sleep(60)
        await self.control({"rate_limit": a.quota})
        self.note("quota restored", to=a.quota)
        await self.sleep(20)
        # settle
        await self.churn(0)
        self.state["phase"] = "settle"
        self.note("churn off: settling")
        await self.wait_ok_cycles(3, after=utcnow(), timeout=600)
        self.note("running integrity --deep")
        code, text, dur = await self.run_cli("integrity", "--deep", "--wait-lock", "600",
                                             "--api-base-url", self.creds["base_url"],
                                             "--token-url", self.creds["token_url"],
                                             "--client-id", self.creds["client_id"],
                                             "--client-secret", self.creds["client_secret"],
                                             "--log-format", "json", "--json",
                                             timeout=900)  # fmt: skip
        self.integrity = {"code": code, "duration_s": round(dur, 1), "out": text[-4000:]}
        self.note("integrity --deep done", code=code, duration_s=round(dur, 1))
        await self.wait_ok_cycles(2, after=utcnow(), timeout=300)
        self.state["phase"] = "end"
        self.serve_exit = await self.kill_serve(signal.SIGTERM)

    async def wait_ok_cycles(self, n: int, after: dt.datetime, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(self.dsn)
                try:
                    ok = await conn.fetchval(
                        "SELECT count(*) FROM sync_runs WHERE mode = 'sync' AND outcome = 'ok' "
                        "AND started_at > $1", after)  # fmt: skip
                finally:
                    await conn.close()
                if ok >= n:
                    self.note(f"{n} clean cycles done")
                    return
            await asyncio.sleep(2)
        self.note(f"TIMEOUT waiting for {n} clean cycles")

    # --- main -------------------------------------------------------------------------

    async def run(self) -> int:
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        pgroot = Path(self.args.pgdir)
        if pgroot.exists():
            shutil.rmtree(pgroot)
        pgroot.mkdir(parents=True)
        self.pg = OwnPostgres(pgroot / "pgdata")
        self.dsn = self.pg.dsn
        self.note("own PostgreSQL", dsn=self.dsn)
        ctl_port, sim_port = free_port(), free_port()
        self.metrics_port = free_port()
        a = self.args
        self.sim = await asyncio.create_subprocess_exec(
            PY, str(HERE / "soak_sim.py"), "--port", str(sim_port), "--control-port",
            str(ctl_port), "--orders", str(a.orders), "--quota", str(a.quota),
            "--access-ttl", str(a.access_ttl), "--seed", str(a.seed),
            stdout=asyncio.subprocess.PIPE, stderr=open(self.out / "sim.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        assert self.sim.stdout is not None
        line = (await asyncio.wait_for(self.sim.stdout.readline(), 60)).decode()
        self.creds = dict(part.split("=", 1) for part in line.split())
        self.sim_origin = self.creds["base_url"].split("/public-api")[0]
        self.ctl = f"http://127.0.0.1:{ctl_port}"
        self.note("simulator", **{k: v for k, v in self.creds.items() if "secret" not in k})
        self.http = aiohttp.ClientSession()
        self.integrity: dict[str, Any] = {}
        self.serve_exit: int | None = None
        pollers = [asyncio.create_task(self.poll_http()), asyncio.create_task(self.poll_cli())]
        started = utcnow()
        try:
            await self.scenario()
        finally:
            self.done.set()
            for p in pollers:
                p.cancel()
            with contextlib.suppress(ProcessLookupError):
                if self.serve and self.serve.returncode is None:
                    self.serve.kill()
        truth = await self.truth()
        result = await self.evaluate(truth, started)
        await self.http.close()
        self.sim.send_signal(signal.SIGTERM)
        await self.sim.wait()
        self.pg.close()
        (self.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps({"figures": result["figures"], "checks": result["checks"]},
                         indent=1, default=str))  # fmt: skip
        return 0 if all(c["ok"] for c in result["checks"].values()) else 1

    # --- evaluation -------------------------------------------------------------------

    async def evaluate(self, truth: dict[str, Any], started: dt.datetime) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await self._evaluate(conn, truth, started)
        finally:
            await conn.close()

    async def _evaluate(
        self, conn: asyncpg.Connection, truth: dict[str, Any], started: dt.datetime
    ) -> dict[str, Any]:
        checks: dict[str, dict[str, Any]] = {}

        def check(name: str, ok: bool, **detail: Any) -> None:
            checks[name] = {"ok": bool(ok), **detail}

        snapshot = {int(k): v for k, v in truth["snapshot"].items()}
        deleted = {int(k) for k in truth["deleted"]}
        rows = await conn.fetch(
            "SELECT id, numero, situacao, data_emissao, data_prevista, data_conclusao, "
            "cliente_nome, valor, possibly_deleted, detail_stale FROM ordens_servico "
            "WHERE account = 'default'"
        )
        mirror = {r["id"]: r for r in rows}
        diffs: list[str] = []
        for i, want in snapshot.items():
            got = mirror.get(i)
            if got is None:
                diffs.append(f"missing {i}")
                continue
            for key in ("numero", "situacao", "data_emissao", "data_prevista",
                        "data_conclusao", "cliente_nome", "valor"):  # fmt: skip
                g = got[key]
                g = g.isoformat() if isinstance(g, dt.date | dt.datetime) else g
                g = str(g) if key == "valor" and g is not None else g
                w = want[key]
                if key == "valor" and w is not None:
                    w = str(w)
                if g != w:
                    diffs.append(f"{i}.{key}: truth {w!r}, mirror {g!r}")
            if got["possibly_deleted"]:
                diffs.append(f"{i}: live order flagged possibly_deleted")
        extra = set(mirror) - set(snapshot)
        unexplained = sorted(extra - deleted)
        unflagged = sorted(i for i in extra & deleted if not mirror[i]["possibly_deleted"])
        check(
            "mirror equals the simulator",
            not diffs and not unexplained,
            differences=diffs[:40],
            n_differences=len(diffs),
            extra_not_deleted=unexplained,
        )
        check(
            "deleted orders kept and flagged possibly_deleted",
            not unflagged,
            deleted=len(deleted),
            in_mirror=len(extra & deleted),
            unflagged=unflagged[:40],
        )
        stale = await conn.fetchval(
            "SELECT count(*) FROM ordens_servico WHERE account='default' AND detail_stale "
            "AND NOT possibly_deleted")  # fmt: skip
        check("detail backlog drained", stale == 0, detail_stale=stale)

        # --- history ---
        hist_rows = await conn.fetch(
            "SELECT id_os, status_antigo, status_novo, changed_at, source FROM "
            "ordem_status_history WHERE account='default' ORDER BY id_os, seq"
        )
        history: dict[int, list[asyncpg.Record]] = {}
        for r in hist_rows:
            history.setdefault(r["id_os"], []).append(r)
        initial = {int(k): v for k, v in truth["initial"].items()}
        trajectories: dict[int, list[tuple[dt.datetime | None, int | None]]] = {
            i: [(None, s)] for i, s in initial.items()
        }
        for e in truth["events"]:
            trajectories.setdefault(e["id"], []).append((ts(e["t"]), e["new"]))
        ok_cycles = [
            (r["started_at"], r["finished_at"])
            for r in await conn.fetch(
                "SELECT started_at, finished_at FROM sync_runs WHERE mode='sync' "
                "AND outcome='ok' ORDER BY started_at"
            )
        ]
        chain_bad, not_subseq, wrong_end, gaps, first_missing = [], [], [], [], []
        for i, traj in trajectories.items():
            rows_i = history.get(i, [])
            if not rows_i:
                if i in snapshot:
                    first_missing.append(i)
                continue
            if rows_i[0]["status_antigo"] is not None:
                chain_bad.append((i, "first row has an old status"))
            for prev, cur in itertools.pairwise(rows_i):
                if cur["status_antigo"] != prev["status_novo"]:
                    chain_bad.append((i, f"{prev['status_novo']} then {cur['status_antigo']}"))
            if any(r["status_antigo"] == r["status_novo"] for r in rows_i):
                chain_bad.append((i, "a row that changes nothing"))
            seen = [r["status_novo"] for r in rows_i]
            statuses = [s for _, s in traj if s is not None]
            k = 0
            for s in seen:
                while k < len(statuses) and statuses[k] != s:
                    k += 1
                if k == len(statuses):
                    not_subseq.append({"id": i, "seen": seen, "truth": statuses})
                    break
                k += 1
            if i in snapshot and seen[-1] != snapshot[i]["situacao"]:
                wrong_end.append({"id": i, "seen": seen, "truth": statuses})
            # gaps: an open status held across a whole successful cycle must be what the
            # mirror's history says the order was at the end of that cycle
            for n, (start_t, s) in enumerate(traj):
                if start_t is None or s not in OPEN:
                    continue
                end_t = traj[n + 1][0] if n + 1 < len(traj) else None
                covered = [c for c in ok_cycles
                           if c[0] > start_t and (end_t is None or c[1] < end_t)]  # fmt: skip
                if not covered or covered[0][0] < rows_i[0]["changed_at"]:
                    continue
                c_end = covered[0][1]
                known = [r["status_novo"] for r in rows_i if r["changed_at"] <= c_end]
                if not known or known[-1] != s:
                    gaps.append({"id": i, "status": s, "from": start_t.isoformat(),
                                 "to": end_t.isoformat() if end_t else None,
                                 "first_cycle_within": [c.isoformat() for c in covered[0]],
                                 "mirror_then": known[-1] if known else None,
                                 "seen": seen, "truth": statuses})  # fmt: skip
        dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT id_os, status_antigo, status_novo, changed_at, "
            "count(*) FROM ordem_status_history GROUP BY 1,2,3,4 HAVING count(*) > 1) d"
        )
        check("history chains consistent", not chain_bad, bad=chain_bad[:30], duplicates=dupes)
        check("history is a subsequence of the truth", not not_subseq, bad=not_subseq[:20],
              n=len(not_subseq))  # fmt: skip
        check("history ends at the current status", not wrong_end, bad=wrong_end[:20])
        check("every order has a first sighting", not first_missing, missing=first_missing[:20])
        check("no gap a cycle could have seen (open statuses)", not gaps, gaps=gaps[:20],
              n=len(gaps))  # fmt: skip

        # --- import_failures ---
        failures = [
            dict(r)
            for r in await conn.fetch(
                "SELECT id_ordem, erro, tentativas, resolvido, ultima_tentativa "
                "FROM import_failures"
            )
        ]
        check("import_failures empty (no outage blamed on a record)",
              not [f for f in failures if not f["resolvido"]], rows=failures[:20],
              total=len(failures))  # fmt: skip

        # --- sync_runs ---
        runs = [dict(r) for r in await conn.fetch(
            "SELECT id, mode, invoked_as, started_at, finished_at, outcome, requests_total, "
            "rate_limited, retries, errors FROM sync_runs ORDER BY started_at")]  # fmt: skip
        dup_runs = await conn.fetch(
            "SELECT mode, started_at, count(*) FROM sync_runs GROUP BY 1,2 HAVING count(*) > 1"
        )
        logged = self.logged_runs()
        by_key: dict[tuple[str, str], int] = {}
        for r in runs:
            if r["invoked_as"] == "serve":
                key = (r["mode"], r["outcome"])
                by_key[key] = by_key.get(key, 0) + 1
        check("sync_runs: no run recorded twice", not dup_runs,
              duplicates=[dict(d) for d in dup_runs])  # fmt: skip
        missing_rows = {f"{k[0]}/{k[1]}": v - by_key.get(k, 0) for k, v in logged["by_key"].items()
                        if v > by_key.get(k, 0)}  # fmt: skip
        check("sync_runs: every run serve logged is recorded (or said unrecorded)",
              sum(missing_rows.values()) <= logged["unrecorded_warnings"],
              logged={f"{k[0]}/{k[1]}": v for k, v in logged["by_key"].items()},
              recorded={f"{k[0]}/{k[1]}": v for k, v in by_key.items()},
              missing=missing_rows, unrecorded_warnings=logged["unrecorded_warnings"])  # fmt: skip

        # --- tokens ---
        stored = await conn.fetchrow(
            "SELECT refresh_token, access_expires_at, updated_at FROM tiny_tokens "
            "WHERE account='default'")  # fmt: skip
        stats = truth["stats"]
        grant_ok = None
        if stored is not None:
            form = {"grant_type": "refresh_token", "refresh_token": stored["refresh_token"],
                    "client_id": self.creds["client_id"],
                    "client_secret": self.creds["client_secret"]}  # fmt: skip
            async with self.http.post(self.creds["token_url"], data=form) as r:
                grant_ok = [r.status, (await r.text())[:200] if r.status != 200 else "ok"]
        check("the stored refresh token is the live one, and it still grants",
              stored is not None and stored["refresh_token"] == truth["refresh_token"]
              and grant_ok is not None and grant_ok[0] == 200
              and stats["stale_refresh_uses"] == 0,
              grant=grant_ok, stale_refresh_uses=stats["stale_refresh_uses"])  # fmt: skip

        held = [
            dict(r)
            for r in await conn.fetch(
                "SELECT id, entrypoint, status, updated FROM pgqueuer WHERE status = 'failed'"
            )
        ]
        check("no unit held as failed on the work queue", not held, units=held)
        check("integrity --deep exits 0", self.integrity.get("code") == 0,
              integrity=self.integrity)  # fmt: skip
        check("serve drained on SIGTERM with 0", self.serve_exit == 0, code=self.serve_exit)
        rescue = list((self.out / "data").glob("rescued-tokens/*"))
        check("no rescue file left behind", not rescue, files=[str(p) for p in rescue])

        # --- what health, readiness and status said ---
        check_polls = self.judge_polls(runs)
        checks.update(check_polls)

        # --- figures ---
        sync_runs = [r for r in runs if r["mode"] == "sync"]
        recover = []
        for f in self.faults:
            end = ts(f["end"])
            nxt = next((r for r in sync_runs if r["outcome"] == "ok" and r["started_at"] >= end),
                       None)  # fmt: skip
            recover.append({**f, "duration_s": round((end - ts(f["start"])).total_seconds(), 1),
                            "next_ok_cycle_finished_after_s": None if nxt is None else round(
                                (nxt["finished_at"] - end).total_seconds(), 1)})  # fmt: skip
        outcomes: dict[str, int] = {}
        for r in runs:
            outcomes[f"{r['mode']}/{r['outcome']}"] = (
                outcomes.get(f"{r['mode']}/{r['outcome']}", 0) + 1
            )
        figures = {
            "wall_s": round((utcnow() - started).total_seconds(), 1),
            "orders_at_end": len(snapshot), "changes_made": len(truth["events"]),
            "changes_by_kind": {k: sum(1 for e in truth["events"] if e["kind"] == k)
                                for k in ("add", "move", "reopen", "delete")},
            "runs_by_outcome": outcomes,
            "sim_stats": stats,
            "serve_reported_429s": sum(r["rate_limited"] for r in runs),
            "serve_reported_retries": sum(r["retries"] for r in runs),
            "history_rows": len(hist_rows),
            "faults": recover,
            "http_polls": len(self.http_polls), "cli_polls": len(self.cli_polls),
        }  # fmt: skip
        return {"figures": figures, "checks": checks, "timeline": self.timeline,
                "http_polls": self.http_polls, "cli_polls": self.cli_polls,
                "runs": runs, "truth": {k: truth[k] for k in ("events", "deleted", "initial")},
                "cycle_log": self.logged_cycles()}  # fmt: skip

    def logged_cycles(self) -> list[dict[str, Any]]:
        """Every cycle serve logged the end of: when, and how it ended."""
        out = []
        for log in self.serve_logs:
            for line in log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    e = json.loads(line)
                    if (e.get("logger") == "asyncsync.work.cycle" and e.get("mode") == "sync"
                            and "outcome" in e):  # fmt: skip
                        out.append({"at": e["ts"].replace("Z", "+00:00"),
                                    "outcome": e["outcome"], "error": e.get("error")})  # fmt: skip
        return out

    def logged_runs(self) -> dict[str, Any]:
        by_key: dict[tuple[str, str], int] = {}
        unrecorded = 0
        for log in self.serve_logs:
            for line in log.read_text(errors="replace").splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if "could not be recorded in sync_runs" in e.get("msg", ""):
                    unrecorded += 1
                if e.get("logger") == "asyncsync.work.cycle" and "outcome" in e and "mode" in e:
                    key = (e["mode"], e["outcome"])
                    by_key[key] = by_key.get(key, 0) + 1
        return {"by_key": by_key, "unrecorded_warnings": unrecorded}

    def judge_polls(self, runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        # /healthz: 200 whenever serve has been up a few seconds
        bad_health = [
            p
            for p in self.http_polls
            if p["serve"] == "up" and p["serve_for"] > 5 and p["healthz"][0] != 200
        ]
        out["/healthz 200 while serve runs"] = {"ok": not bad_health, "bad": bad_health[:10],
                                               "n_bad": len(bad_health)}  # fmt: skip
        # /readyz: names the database while it has been away > 12 s; not after 15 s back
        up_serve = [p for p in self.http_polls if p["serve"] == "up" and p["serve_for"] > 5
                    and p["readyz"][0] is not None]  # fmt: skip
        missed = [p for p in up_serve if p["db"] != "up" and p["db_for"] > 12
                  and "database" not in p["readyz"][1]]  # fmt: skip
        lingering = [p for p in up_serve if p["db"] == "up" and p["db_for"] > 20
                     and "database" in p["readyz"][1]]  # fmt: skip
        out["/readyz names the database while it is away"] = {
            "ok": not missed,
            "bad": missed[:10],
            "n_bad": len(missed),
        }
        out["/readyz clears the database once it is back"] = {
            "ok": not lingering,
            "bad": lingering[:10],
            "n_bad": len(lingering),
        }
        unanswered = [p for p in self.http_polls if p["serve"] == "up" and p["serve_for"] > 5
                      and p["readyz"][0] is None]  # fmt: skip
        out["/readyz answers while serve runs"] = {"ok": not unanswered, "bad": unanswered[:10],
                                                   "n_bad": len(unanswered)}  # fmt: skip
        tiny_seen = [p for p in up_serve if p["tiny"] is not None and "tiny" in p["readyz"][1]]
        out["/readyz names Tiny during its outages (informational)"] = {
            "ok": True,
            "polls_during_tiny_outage": len([p for p in up_serve if p["tiny"]]),
            "naming_tiny": len(tiny_seen),
        }
        # asyncsync health: 1 while the database is away; else agrees with the last cycle
        cycles = [{"finished_at": ts(c["at"]), "outcome": c["outcome"], "errors": [c["error"]]}
                  for c in self.logged_cycles()]  # fmt: skip
        wrong = []
        for p in self.cli_polls:
            code, _text, _ = p["health"]
            at = ts(p["at"])
            if p["db"] != "up" and p["after"]["db"] != "up":
                if code != 1:
                    wrong.append({**p, "why": "database away but health not 1"})
                continue
            if p["db_for"] < 5 or p["after"]["db"] != "up":
                continue
            last = [r for r in cycles if r["finished_at"] <= at]
            if not last or p["phase"] == "first sync":
                continue
            expect = 1 if last[-1]["outcome"] == "failed" else 0
            if code != expect:
                late = [r for r in cycles if at < r["finished_at"]
                        <= at + dt.timedelta(seconds=p["health"][2] + 2)]  # fmt: skip
                if not late:
                    wrong.append({"t": p["t"], "at": p["at"], "health": p["health"],
                                  "last_cycle": [last[-1]["outcome"],
                                                 str(last[-1]["finished_at"]),
                                                 last[-1]["errors"]],
                                  "state": {k: p[k] for k in ("db", "tiny", "serve")}})  # fmt: skip
        out["asyncsync health says what is true"] = {"ok": not wrong, "bad": wrong[:10],
                                                    "n_bad": len(wrong)}  # fmt: skip
        # status --json: answers (or says the database is away), lock free while serve dead
        status_bad = []
        for p in self.cli_polls:
            code, status, _ = p["status"]
            if p["db"] == "up" and p["after"]["db"] == "up" and p["db_for"] > 5:
                if not isinstance(status, dict):
                    status_bad.append({"t": p["t"], "why": "no JSON", "got": status})
                    continue
                if not status.get("accounts"):  # a failed run's report, or no schema
                    status_bad.append({"t": p["t"], "why": "no accounts", "got": status,
                                       "code": code})  # fmt: skip
                    continue
                acct = status["accounts"][0]
                if p["serve"] == "down" and p["after"]["serve"] == "down" and acct["lock"]["held"]:
                    status_bad.append({"t": p["t"], "why": "lock held while serve is dead",
                                       "lock": acct["lock"]})  # fmt: skip
            elif isinstance(status, str) and "Traceback" in status:
                status_bad.append({"t": p["t"], "why": "traceback", "got": status[-300:]})
        out["asyncsync status says what is true"] = {"ok": not status_bad, "bad": status_bad[:10]}
        return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every pause")
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--quota", type=int, default=300)
    p.add_argument("--access-ttl", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--interval", type=float, default=20)
    p.add_argument("--churn-every", type=float, default=1.5)
    p.add_argument("--breaker-cooldown", type=float, default=20)
    p.add_argument("--statement-timeout", type=float, default=5)
    p.add_argument("--sweep-interval", type=float, default=180)
    p.add_argument("--out", default=str(HERE / "results" / "soak"))
    p.add_argument("--pgdir", default=str(Path(tempfile.gettempdir()) / "asyncsync-soak-pg"))
    return asyncio.run(Soak(p.parse_args()).run())


if __name__ == "__main__":
    sys.exit(main())
