"""Results of the rollout commands: named checks, a verdict, text or JSON.

Exit codes shared by every command: 0 go / as expected, 1 no-go / drift /
a failed step (every reason listed), 2 usage or connection error.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

OK, WARN, FAIL = "ok", "warn", "fail"
EXIT_OK, EXIT_NO_GO, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input or an unreachable database: the command prints the message and exits 2, changing nothing."""


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    command: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, status: str, detail: str, **data: Any) -> Check:
        check = Check(name, status, detail, data)
        self.checks.append(check)
        return check

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def verdict(self) -> str:
        return "no-go" if self.failures else "go"

    @property
    def exit_code(self) -> int:
        return EXIT_NO_GO if self.failures else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "verdict": self.verdict, "facts": self.facts,
                "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def to_text(self, width: int | None = None) -> str:
        """The facts, a table of the checks, and the verdict with every reason for a no-go."""
        lines = [f"reserve {self.command}"]
        lines += [f"  {key}: {value}" for key, value in self.facts.items()]
        lines.append(table(("status", "check", "detail"),
                           [(c.status.upper(), c.name, c.detail) for c in self.checks], width=width).rstrip("\n"))
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in self.failures)
        lines.append(f"verdict: {self.verdict.upper()}" + (f" ({reasons})" if reasons else ""))
        return "\n".join(lines)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], *, width: int | None = None,
          title: str | None = None) -> str:
    """Rows as a terminal table (rich), rendered to text.

    ``width`` is the terminal's (the CLI passes it when stdout is one; long
    cells then wrap); without it nothing wraps, so logs, files and searches
    see every value whole, on one line.
    """
    grid = Table(*columns, title=title, box=None, show_edge=False, pad_edge=False, header_style="bold")
    for row in rows:
        grid.add_row(*(Text(str(cell)) for cell in row))
    out = io.StringIO()
    console = Console(file=out, width=width or 100_000, no_color=True, highlight=False, soft_wrap=width is None)
    console.print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
