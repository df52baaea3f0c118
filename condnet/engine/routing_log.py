"""The routing diagnostics' file in a run folder: one JSON object per line, the records of
`condnet.engine.diagnostics.RoutingMonitor.epoch_records`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from condnet.engine.metrics import from_one

ROUTING_FILE = "routing.jsonl"


class RoutingLog:
    """`ROUTING_FILE` in a run folder: appended per epoch, cut back on resume."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ROUTING_FILE

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def truncate(self, epochs: int) -> None:
        """Keep the records of the first `epochs` epochs (a resumed run rewrites the rest)."""
        if self.path.exists():
            kept = [r for r in read_routing(self.path.parent) if r["epoch"] <= epochs]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def read_routing(out: str | Path) -> list[dict[str, Any]]:
    """The records of the run in `out` (none when it has no routing file), epochs counted
    from 1."""
    path = Path(out) / ROUTING_FILE
    if not path.exists():
        return []
    return from_one([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
