"""The online swap of the allocations guard (the default method of revision 0004).

- ``state``: the machinery's names and the one-row state a rerun resumes from;
- ``shadow``: the shadow table's definition, read from the live table's catalog;
- ``changelog``: the capture (one append per written row, in the writer's transaction) and the replay that
  keeps the shadow in step, in its own transactions;
- ``dependents``: foreign keys, policies, views, publications and triggers that
  follow the table when it changes identity;
- ``exchange``: the bounded lock under which live and shadow trade places, and
  what follows it (validation, the window, cleanup);
- ``online``: the phases in order, resumable: build, backfill, exchange, settle.
"""
