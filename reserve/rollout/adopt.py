"""``reserve adopt``: put an existing baseline database under Alembic, only if it really is the baseline."""

from __future__ import annotations

from alembic import command
from sqlalchemy.engine import URL

from reserve import db
from reserve.report import FAIL, OK, Report
from reserve.schema import expectations, revisions

BASELINE = "0001_baseline"


def adopt(url: URL) -> Report:
    """Verify the live schema equals 0001_baseline, then stamp it; refuse with the differences otherwise."""
    report = Report("adopt")
    with db.connect(url, autocommit=True) as conn:
        report.facts["database"] = db.masked(url)
        current = revisions.current_revision(conn)
        if current is not None:
            report.add("not adopted yet", FAIL, f"already adopted: alembic_version is {current}; nothing to do "
                       "(use `alembic upgrade head`)")
            return report
        found = expectations.drift(conn, BASELINE)
        if found:
            report.add("matches baseline", FAIL, f"{len(found)} difference(s) from {BASELINE}: "
                       + "; ".join(map(str, found[:10])), differences=[str(d) for d in found])
            return report
    command.stamp(revisions.config(url), BASELINE)
    report.add("matches baseline", OK, f"live catalog equals {BASELINE}")
    report.add("stamped", OK, f"alembic_version set to {BASELINE}")
    return report
