"""The bundled Tiny simulator in its own process, plus a soak control port.

The simulator's own ``/_sim/control`` cannot change orders, so this process serves the
simulator (``TinySimulator``, the API the product talks to) on one port and, on a second
port, a small control API for the soak driver:

  POST /soak/churn  {"every_s": 1.5}   start (or, with 0, stop) continuous order changes
  GET  /soak/truth                     snapshot, every change made (with times), the valid
                                       refresh token, the simulator's stats

Every change is logged with the wall time (UTC) it was made, so the driver can tell which
cycle could have seen which status.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import signal
import sys

import orjson
from aiohttp import web

from asyncsync.simulator import SimConfig, TinySimulator
from asyncsync.status import Situacao

OPEN = (Situacao(0), Situacao(1), Situacao(2), Situacao(5), Situacao(6))
CLOSED = (Situacao(3), Situacao(4), Situacao(7))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Churn:
    def __init__(self, sim: TinySimulator, seed: int) -> None:
        self.sim = sim
        self.rng = random.Random(seed)
        self.events: list[dict[str, object]] = []  # every change, in order
        self.deleted: dict[int, str] = {}
        self.initial = {i: int(o.situacao) for i, o in sim.orders.items()}
        self.every_s = 0.0
        self.task: asyncio.Task[None] | None = None
        self.touched: set[int] = set()  # orders changed at least once (for reopen picks)

    def log(self, kind: str, order_id: int, old: int | None, new: int | None) -> None:
        self.events.append(
            {"t": utcnow().isoformat(), "kind": kind, "id": order_id, "old": old, "new": new}
        )

    def one(self) -> None:
        sim, rng = self.sim, self.rng
        orders = sim.orders
        open_ids = [i for i, o in orders.items() if o.situacao in OPEN]
        closed_touched = [i for i in self.touched if i in orders and orders[i].situacao in CLOSED]
        r = rng.random()
        if r < 0.20 or len(open_ids) < 10:  # a new order, mostly open
            status = rng.choice(OPEN) if rng.random() < 0.8 else Situacao(3)
            new_id = sim.add_order(situacao=status)
            self.touched.add(new_id)
            self.log("add", new_id, None, int(status))
        elif r < 0.52:  # open -> open
            i = rng.choice(open_ids)
            old = orders[i].situacao
            new = rng.choice([s for s in OPEN if s is not old])
            sim.set_status(i, new)
            self.touched.add(i)
            self.log("move", i, int(old), int(new))
        elif r < 0.72:  # open -> closed
            i = rng.choice(open_ids)
            old = orders[i].situacao
            new = rng.choice((Situacao(3), Situacao(3), Situacao(7), Situacao(4)))
            sim.set_status(i, new)
            self.touched.add(i)
            self.log("move", i, int(old), int(new))
        elif r < 0.84:  # reopen: closed -> open (a recently closed one when there is one)
            pool = closed_touched or [i for i, o in orders.items() if o.situacao is Situacao(3)]
            i = rng.choice(pool)
            old = orders[i].situacao
            new = rng.choice((Situacao(0), Situacao(6), Situacao(5)))
            sim.set_status(i, new)
            self.touched.add(i)
            self.log("reopen", i, int(old), int(new))
        elif r < 0.90:  # closed -> closed
            pool = closed_touched or [i for i, o in orders.items() if o.situacao in CLOSED]
            i = rng.choice(pool)
            old = orders[i].situacao
            new = rng.choice([s for s in CLOSED if s is not old])
            sim.set_status(i, new)
            self.touched.add(i)
            self.log("move", i, int(old), int(new))
        else:  # delete: mostly open orders, sometimes a closed one
            pool = open_ids if rng.random() < 0.7 else list(orders)
            i = rng.choice(pool)
            old = orders[i].situacao
            sim.delete_order(i)
            self.deleted[i] = utcnow().isoformat()
            self.log("delete", i, int(old), None)

    async def run(self) -> None:
        while self.every_s > 0:
            self.one()
            await asyncio.sleep(self.every_s * (0.5 + self.rng.random()))


def _default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quota", type=int, default=300)
    p.add_argument("--access-ttl", type=float, default=4.0)
    p.add_argument("--latency-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    config = SimConfig(
        orders=args.orders, seed=args.seed, rate_limit_per_minute=args.quota,
        access_ttl_s=args.access_ttl, latency_s=args.latency_ms / 1000,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with TinySimulator(config, port=args.port) as sim:
        churn = Churn(sim, args.seed)

        async def set_churn(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            churn.every_s = float(body.get("every_s", 0))
            if churn.every_s > 0 and (churn.task is None or churn.task.done()):
                churn.task = asyncio.create_task(churn.run())
            return web.json_response({"every_s": churn.every_s, "events": len(churn.events)})

        async def truth(request: web.Request) -> web.Response:
            body = {
                "at": utcnow().isoformat(),
                "snapshot": {str(k): v for k, v in sim.snapshot().items()},
                "initial": {str(k): v for k, v in churn.initial.items()},
                "events": churn.events,
                "deleted": {str(k): v for k, v in churn.deleted.items()},
                "refresh_token": sim.valid_refresh_token(),
                "stats": sim.stats.as_dict(),
                "control": sim.control_state(),
            }
            return web.Response(body=orjson.dumps(body, default=_default),
                                content_type="application/json")  # fmt: skip

        app = web.Application()
        app.router.add_post("/soak/churn", set_churn)
        app.router.add_get("/soak/truth", truth)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.control_port).start()
        print(
            f"base_url={sim.base_url} token_url={sim.token_url} client_id={config.client_id} "
            f"client_secret={config.client_secret} refresh_token={sim.valid_refresh_token()}",
            flush=True,
        )
        await stop.wait()
        churn.every_s = 0
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
