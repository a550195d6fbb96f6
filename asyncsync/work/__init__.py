"""Work units and their dispatch: the layer between the modes and the jobs that lets any
number of worker processes share the accounts of one database.

A unit (:mod:`.units`) is an account, a kind and its parameters: an account's cycle (an
incremental sync with its due retries, the daily sweep when it is due), its integrity
check, the keep-alive of its refresh token, a month of its backfill. Units live on a
PostgreSQL job queue (:class:`~asyncsync.seams.WorkQueue`); a worker (:mod:`.worker`)
picks them, leases the unit's account so that one process at a time talks to its API
(:mod:`.handlers`), and runs the existing jobs through the seams Protocols. The periodic
units re-arm themselves on the queue; the planner (:mod:`.planner`) makes sure every
enabled account has them.
"""
