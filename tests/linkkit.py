"""Round trips, counted from the sandbox's access log (docs/SEMANTICS.md, "Cost of each
operation").

Behind the sandbox's link emulator (`fwfs serve --rtt-ms N`), two requests that waited on
each other arrive at the site at least a round trip apart (the first one's answer on its
way back, the next request on its way out), while requests sent side by side arrive
together. The site stamps each request's start and duration, so the round trips a program
waited for are the longest chain of requests in which each one started at least half a
round trip after the previous one ended. Counting, not timing: a slow machine stretches the
gaps, it does not close them.
"""

from __future__ import annotations

from typing import Any


def gap(rtt_ms: float) -> float:
    """Seconds between a request's end and the start of one that waited for it, at least;
    requests sent side by side start closer together than this."""
    return rtt_ms / 1000 / 2


def round_trips(entries: list[dict[str, Any]], rtt_ms: float) -> int:
    """The longest chain of `entries` each starting at least `gap(rtt_ms)` after the one
    before it ended."""
    least = gap(rtt_ms)
    spans = sorted((e["start"], e["start"] + e["duration"]) for e in entries)
    depth: list[int] = []
    for i, (start, _end) in enumerate(spans):
        before = [depth[j] for j in range(i) if spans[j][1] + least <= start]
        depth.append(1 + max(before, default=0))
    return max(depth, default=0)
