"""The open(2) flag matrix of a mount: what each combination of flags must do, by rule.

Every access mode (O_RDONLY, O_WRONLY, O_RDWR) with every subset of O_CREAT, O_EXCL,
O_TRUNC and O_APPEND, opened on an existing file of an acquisition and on a new name there,
on a writable and on a `--read-only` mount. `expect()` states the rule (docs/SEMANTICS.md,
*Writes* and *Errors*, on top of POSIX open(2)); `render()` turns it into the Markdown table
of docs/RELIABILITY-open-flags.md, and test_open_flags.py checks both that the committed
table is this output and that real mounts do what it says.

    python tests/mount/reliability/open_flags.py           # print the document
    python tests/mount/reliability/open_flags.py --write   # rewrite docs/RELIABILITY-open-flags.md
    python tests/mount/reliability/open_flags.py --check   # exit 1 if the committed one differs
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "RELIABILITY-open-flags.md"

ACCESS = {"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR}
EXTRAS = {
    "O_CREAT": os.O_CREAT,
    "O_EXCL": os.O_EXCL,
    "O_TRUNC": os.O_TRUNC,
    "O_APPEND": os.O_APPEND,
}
TARGETS = ("existing", "new")  # an existing file (version 1) of an acquisition, or a free name
MOUNTS = ("writable", "read-only")

ORIGINAL = b"the original bytes of this file\n"  # what every existing file holds at first
PAYLOAD = b"WRITTEN"  # what a program that writes writes, with one write(2)


@dataclass(frozen=True)
class Case:
    """One row: the flags, and whether the program writes PAYLOAD after a successful open
    (only rows whose access mode allows writing do). A program that may read first reads
    from offset 0 with pread(2), which leaves the file position where the open put it."""

    access: str
    extras: tuple[str, ...]
    writes: bool

    @property
    def flags(self) -> int:
        value = ACCESS[self.access]
        for name in self.extras:
            value |= EXTRAS[name]
        return value

    @property
    def label(self) -> str:
        return "\\|".join((self.access, *self.extras))

    @property
    def readable(self) -> bool:
        return self.access != "O_WRONLY"

    @property
    def then(self) -> str:
        steps = (["read"] if self.readable else []) + (["write"] if self.writes else [])
        return ", ".join([*steps, "close"])

    def has(self, extra: str) -> bool:
        return extra in self.extras


def cases() -> Iterator[Case]:
    """Every row, in table order: 16 for O_RDONLY, 32 each for O_WRONLY and O_RDWR."""
    for access in ACCESS:
        for n in range(len(EXTRAS) + 1):
            for extras in itertools.combinations(EXTRAS, n):
                for writes in (False, True) if access != "O_RDONLY" else (False,):
                    yield Case(access, extras, writes)


@dataclass(frozen=True)
class Outcome:
    """What the open returns and, after the close, what the site holds at that name.

    `error` is an errno name (the open fails, nothing changes) or None. `site` is one of
    `unchanged` (version 1, the original bytes, no upload), `new version` (version 2),
    `new file` (version 1 of a name that was free), `nothing` (the name stays free).
    `content` says what the bytes of a new version or file are. `reads` is what a read at
    offset 0 right after the open returns: the original bytes or none (`b""`)."""

    error: str | None
    site: str
    content: str = ""
    reads: bytes = b""

    def cell(self) -> str:
        if self.error:
            return f"`{self.error}`"
        return f"{self.site}: {self.content}" if self.content else self.site


# What `content` means, as bytes.
CONTENTS: dict[str, Callable[[], bytes]] = {
    "0 bytes": lambda: b"",
    "written": lambda: PAYLOAD,
    "old + written": lambda: ORIGINAL + PAYLOAD,
    "written over old": lambda: PAYLOAD + ORIGINAL[len(PAYLOAD) :],
}


def expect(case: Case, target: str, mount: str) -> Outcome:
    """The rule. POSIX first, then docs/SEMANTICS.md:

    1. O_CREAT|O_EXCL on an existing name fails with EEXIST, whatever else (POSIX; the
       kernel decides before a read-only mount is considered). O_EXCL without O_CREAT
       means nothing for a regular file.
    2. A free name without O_CREAT is ENOENT.
    3. `--read-only`: "any write (open for writing, create, ..., truncate) ... EROFS".
       Creating a name is a write; so are write access and O_TRUNC (which truncates even
       with O_RDONLY, and needs write permission for it). O_RDONLY with O_APPEND, or with
       O_CREAT of a name that exists, writes nothing and opens as a read: the file is
       unchanged.
    4. Writable mount, a free name with O_CREAT: *Create*, uploaded at close; never
       written, it is *Empty files*: a 0-byte file. O_TRUNC and O_APPEND change nothing
       in an empty file.
    5. Writable mount, an existing file: with O_TRUNC, *Overwrite*: version 2, holding
       what was written (0 bytes if nothing). Without O_TRUNC, *Edit in place*: a write
       makes version 2 from the old bytes (appended to with O_APPEND, else written over
       from offset 0); an open that writes nothing uploads nothing.
    """
    exists = target == "existing"
    creat, excl = case.has("O_CREAT"), case.has("O_EXCL")
    trunc, append = case.has("O_TRUNC"), case.has("O_APPEND")
    if exists and creat and excl:
        return Outcome("EEXIST", "unchanged")
    if not exists and not creat:
        return Outcome("ENOENT", "nothing")
    write_access = case.access != "O_RDONLY"
    if mount == "read-only":
        if not exists or write_access or trunc:
            return Outcome("EROFS", "unchanged" if exists else "nothing")
        return Outcome(None, "unchanged", reads=ORIGINAL)
    if not exists:
        return Outcome(None, "new file", "written" if case.writes else "0 bytes")
    if trunc:
        return Outcome(None, "new version", "written" if case.writes else "0 bytes")
    if not case.writes:
        return Outcome(None, "unchanged", reads=ORIGINAL)
    content = "old + written" if append else "written over old"
    return Outcome(None, "new version", content, reads=ORIGINAL)


def site_bytes(outcome: Outcome) -> bytes | None:
    """The bytes the site holds at the name after the close (None: no such file)."""
    if outcome.site == "nothing":
        return None
    if outcome.site == "unchanged":
        return ORIGINAL
    return CONTENTS[outcome.content]()


def site_version(outcome: Outcome) -> int | None:
    return {"nothing": None, "unchanged": 1, "new file": 1, "new version": 2}[outcome.site]


HEADER = """\
# Open flags on a mount

Generated by `tests/mount/reliability/open_flags.py --write` from the rule its `expect()`
states (docs/SEMANTICS.md, *Writes* and *Errors*, on top of POSIX `open(2)`);
`tests/mount/reliability/test_open_flags.py` checks that this file is that output, and runs
every cell on a real mount of a sandbox site.

Each row opens with an access mode and a subset of `O_CREAT`, `O_EXCL`, `O_TRUNC` and
`O_APPEND`, either an existing file of an acquisition (version 1) or a free name in it, on a
writable mount and on a `--read-only` one. After a successful open the program does what
*then* says: `read` is a `pread(2)` from offset 0 (it sees the file's bytes, or none when
`O_TRUNC` emptied it or the name was free), `write` one `write(2)` of `WRITTEN` at the file
position (0 after the open, the end with `O_APPEND`).

A cell is the errno of the open (nothing changes on the site), or what the site holds at that
name once the file is closed:

- **unchanged**: still version 1 with its original bytes; nothing was uploaded.
- **new version**: version 2, holding `0 bytes`, what was `written`, `old + written`
  (appended), or `written over old` (the first bytes replaced).
- **new file**: version 1 of a name that was free, holding `0 bytes` or what was `written`.

The rules, in order: `O_CREAT|O_EXCL` on an existing name is `EEXIST`; a free name without
`O_CREAT` is `ENOENT`; on a `--read-only` mount, creating, opening for writing and `O_TRUNC`
are `EROFS`, and the rest opens for reading; on a writable mount `O_TRUNC` makes a new
version of what is written, an existing file opened without it changes only if written to
(copy-on-write), and a created file is uploaded even if empty.
"""


def render() -> str:
    rows = list(cases())
    columns = [(t, m) for m in MOUNTS for t in TARGETS]
    names = {"existing": "existing file", "new": "free name"}
    head = [f"{names[t]}, {m}" for t, m in columns]
    lines = [
        HEADER,
        "| flags | then | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    tally: dict[str, int] = {}
    for case in rows:
        cells = []
        for target, mount in columns:
            outcome = expect(case, target, mount)
            cells.append(outcome.cell())
            key = outcome.error or outcome.site
            tally[key] = tally.get(key, 0) + 1
        lines.append(f"| `{case.label}` | {case.then} | " + " | ".join(cells) + " |")
    total = len(rows) * len(columns)
    counts = ", ".join(f"{key} {n}" for key, n in sorted(tally.items()))
    lines += ["", f"{len(rows)} rows, {total} cells: {counts}.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--write" in argv:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
        return 0
    if "--check" in argv:
        same = DOC.exists() and DOC.read_text(encoding="utf-8") == text
        if not same:
            print(f"{DOC} is not the generator's output: run {sys.argv[0]} --write")
        return 0 if same else 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
