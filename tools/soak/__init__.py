"""Live-traffic soak: the swap, its emergency rollback and the swap again, while confirmations keep coming.

Why: the rehearsal proves the chain on an idle database, but production runs
it while ``confirm_hold_assignment_tx`` is being called. This soak starts the
database one revision below head (the swap's down revision: v12 installed, old
guard) with generated data, starts N worker processes that create a hold and
confirm it in a loop (one in ``overlap_every`` deliberately overlapping an
existing allocation, so the overlap rejection happens under both guards), and
meanwhile runs ``alembic upgrade head``, ``downgrade -1``, ``upgrade head`` as
an operator would (subprocesses, ``-x`` lock options passed through).

Afterwards it checks what must hold whatever the timing: no overlapping live
allocations (the monitoring query), an evidence row for every confirmation
the clients saw succeed (v12 is installed throughout) and none for one they
saw fail, no confirmed booking without its allocation, exactly the
allocations written that were confirmed, the database at head with the
expected catalog, and no worker error but the expected ones: the overlap
rejection (on the deliberate overlaps only) and the retryable SQLSTATEs.
It reports confirmations/s per phase and the longest stall any worker saw.

Workers run in separate processes (``spawn``) so that they really run in
parallel with each other and with Alembic; their timestamps come from
``time.monotonic()``, which on Linux is one system-wide clock.

The modules, each importing only those above it:

- ``workers``: what a worker process does (its plan, its SQL, how it classifies errors, its log);
- ``checks``: the invariants checked against the database afterwards;
- ``timeline``: the phases, and the figures per phase cut from the workers' logs;
- ``result``: the soak's figures and verdict, as JSON and as terminal tables;
- ``run``: preparing the database, starting the workers, running the chain, collecting;
- ``__main__``: the command, ``python -m tools.soak`` (exit 0 ok, 1 an invariant broke, 2 setup error).

This package imports none of them, so a worker process (``spawn``) loads only what it runs.
"""
