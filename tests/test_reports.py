"""What the README tells a BI analyst to read: ``ordens_finalizadas`` is "the one place"
for concluded orders. An order deleted in Tiny stays in the mirror flagged
``possibly_deleted`` (never deleted); ``asyncsync status`` and the ``asyncsync_orders``
gauge leave it out, and the view must not count it as concluded either."""

from __future__ import annotations

from asyncsync.status import Situacao

from .helpers import full_sync, integrity


async def test_an_order_deleted_in_tiny_is_not_reported_as_concluded(
    simulator, runtime_for, db
) -> None:
    sim = await simulator(orders=200, seed=4)
    async with runtime_for(sim) as rt:
        await full_sync(rt)
    gone = next(i for i, o in sim.orders.items() if o.situacao == Situacao.FINALIZADA)
    sim.delete_order(gone)
    async with runtime_for(sim) as rt:
        await integrity(rt, deep=True)
    assert await db.fetchval(
        "SELECT possibly_deleted FROM ordens_servico WHERE id = $1", gone
    )  # the integrity check found it gone (a 404)
    concluded = {r["id"] for r in await db.fetch("SELECT id FROM ordens_finalizadas")}
    in_tiny = {i for i, o in sim.orders.items() if o.situacao == Situacao.FINALIZADA}
    assert gone not in concluded
    assert concluded == in_tiny
