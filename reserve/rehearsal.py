"""The rehearsal: the whole rollout, timed, on a throw-away database.

This first version proves the chain round-trips on a fresh server: upgrade
head, downgrade base, upgrade head again, with the catalog compared at each
end. The full rehearsal (dataset, preflight, evidence bundle) grows here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import URL

from reserve import alembic_runner, catalog, db
from reserve.ephemeral import EphemeralPostgres


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Report:
    target: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def render(self) -> str:
        lines = [f"rehearsal on {self.target}"]
        for step in self.steps:
            mark = "ok  " if step.ok else "FAIL"
            lines.append(f"  {mark} {step.name:<38} {step.seconds:8.2f}s  {step.detail}")
        lines.append("verdict: " + ("GO" if self.ok else f"NO-GO (failed: {self.failed_step})"))
        return "\n".join(lines)

    @property
    def failed_step(self) -> str | None:
        return next((step.name for step in self.steps if not step.ok), None)


def _timed(report: Report, name: str, action: Callable[[], str | None]) -> bool:
    started = time.perf_counter()
    try:
        detail = action() or ""
        ok = True
    except Exception as exc:  # a failed step is reported, never hidden
        detail, ok = f"{type(exc).__name__}: {exc}".splitlines()[0], False
    report.steps.append(Step(name, time.perf_counter() - started, ok, detail))
    return ok


def rehearse(url: URL | None = None) -> Report:
    """Run the chain on ``url`` (an empty database) or on a throw-away server when None."""
    with ExitStack() as stack:
        if url is None:
            server = stack.enter_context(EphemeralPostgres())
            url = server.url("postgres")
        report = Report(target=db.masked(url))

        def snap() -> catalog.Snapshot:
            with psycopg.connect(db.libpq_url(url)) as conn:
                return catalog.snapshot(conn)

        before = snap()
        head = alembic_runner.head()

        def round_trip() -> str:
            alembic_runner.downgrade(url, "base")
            if snap() != before:
                raise AssertionError("downgrade base did not restore the original catalog")
            return "catalog equal to the start"

        steps = [
            ("upgrade head", lambda: alembic_runner.upgrade(url, "head") or f"at {head}"),
            ("downgrade base", round_trip),
            ("upgrade head again", lambda: alembic_runner.upgrade(url, "head") or f"at {head}"),
        ]
        for name, action in steps:
            if not _timed(report, name, action):
                break
        return report
