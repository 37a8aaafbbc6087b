"""Count what one command over a fresh mount costs, per sandbox profile.

    .venv/bin/python scripts/count_requests.py [--scale 1000] [--strict] [--data DIR]
        [-- CMD ...]

Starts `fwfs serve --demo --scale N` (plus `--strict`: a real core's behaviour), mounts it
with the default options, runs CMD (default: `ls -lR` of project `Scale N`) with `{mnt}`
replaced by the mount point, and prints the requests it made from the access log, core and
storage apart, with the wall time. `--data` keeps the seeded site for the next run (seeding
1,000 sessions takes a while). docs/SEMANTICS.md's figures come from here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from fwfs.testing.mounts import start_mount
from fwfs.testing.sites import start_site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=1000)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--data", type=Path)
    parser.add_argument("cmd", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fwfs-count-"))
    # A private CA (--strict) reaches the mount through the OS trust store, as a company
    # CA would: start_mount sees to it.
    site = start_site(
        work / "site", data=args.data, scale=args.scale, strict=args.strict, timeout=1800
    )
    try:
        with start_mount(site, work / "mount", timeout=60) as mount:
            mnt = mount.path
            time.sleep(0.5)  # the mount's own start-up requests reach the log
            mark = site.log_mark()
            cmd = args.cmd or ["ls", "-lR", f"{{mnt}}/flywheel/Scale {args.scale}"]
            start = time.monotonic()
            out = subprocess.run(
                [c.replace("{mnt}", str(mnt)) for c in cmd], capture_output=True, check=False
            )
            seconds = time.monotonic() - start
            time.sleep(0.5)  # the last requests' lines
            entries = site.access_log()[mark:]
    finally:
        site.stop()
    by_listener = Counter(str(e.get("listener", "core")) for e in entries)
    # Requests alike but for ids and names: the first three path segments.
    by_kind = Counter(
        f"{e.get('listener', 'core')} {e['method']} " + "/".join(str(e["path"]).split("/")[:3])
        for e in entries
    )
    print(
        json.dumps(
            {
                "profile": "strict" if args.strict else "default",
                "exit": out.returncode,
                "output_lines": out.stdout.count(b"\n"),
                "seconds": round(seconds, 2),
                "requests": len(entries),
                "by_listener": dict(by_listener),
                "by_kind": dict(by_kind),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
