"""A reference model of a Flywheel site as an fwfs mount must show it (docs/SEMANTICS.md),
for tests/mount/reliability/test_reference_model.py.

The model is a history of snapshots of the site: every change (made behind the mount's back
through the SDK, or through the mount itself) appends the site's new state with the times
the change started and was known to be done. What a mount may answer at a moment follows
from the contract:

* *Staleness.* A directory listing is at most `--metadata-ttl` old, so an answer given at
  time t may come from any snapshot that was still current at t - TTL, or a later one
  (`SiteModel.views`). A small margin (`slack`) covers the daemon's own time between its
  freshness check and the kernel's receipt of the answer; it is not a performance claim.
* *The mount's own changes* are seen at once: after an upload, a mkdir or a rename through
  the mount, readdir of that directory (by any path) and the paths the change used must
  show the change (`SiteModel.change(..., listings=, paths=)` sets those floors). Another
  path to the same file (an id alias instead of names) is another inode to the kernel,
  whose attributes it may still hold for its share of the TTL.
* *Names* are computed by `mountkit.entry_names`: the escaping of rule 1 and the first
  collision step of rules 2 and 3, with `analyses` reserved in every container directory.
  The test only makes labels that need no further step.
* *Archives:* `<displayed name>.d` of a zip is reachable, not listed, with its members.

Path resolution is non-deterministic on purpose: each component is looked up in every
snapshot its directory may show, so a path whose directories were listed at different
moments gets every answer the contract allows, and nothing else (`SiteModel.resolve`).
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mountkit import entry_names

GROUP = "g"  # the group of a site with one (each example of the machine has its own)
CHILD_KIND = {"group": "project", "project": "subject", "subject": "session"}
CHILD_KIND["session"] = "acquisition"
_ALIAS = re.compile(r"<id:([A-Za-z0-9_-]{1,64})>")


# ---- what the site holds ------------------------------------------------------------------


@dataclass(frozen=True)
class Cont:
    """A container: `id` and `label` as `mountkit.entry_names` wants them."""

    id: str
    kind: str
    label: str
    parent: str | None


@dataclass(frozen=True, eq=False)
class FileRec:
    """One version of a file of a container. Compared by identity: a snapshot that did not
    change a file shares its record with the one before."""

    name: str
    data: bytes
    version: int
    members: Mapping[str, bytes] | None  # a zip's members by path, None if not a zip

    @property
    def size(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"<{self.name!r} v{self.version}, {self.size} bytes>"


def zip_bytes(members: Mapping[str, bytes], compress: bool) -> bytes:
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as zf:
        for path, data in members.items():
            zf.writestr(path, data)
    return out.getvalue()


def is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def file_rec(name: str, data: bytes, version: int) -> FileRec:
    members: dict[str, bytes] | None = None
    if is_zip_name(name):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
        except zipfile.BadZipFile:
            members = None
    return FileRec(name, data, version, members)


Entry = tuple[str, ...]  # ("dir", cid) or ("file", cid, raw name)


@dataclass(frozen=True, eq=False)
class Snapshot:
    containers: Mapping[str, Cont]
    files: Mapping[str, Mapping[str, FileRec]]  # container id -> raw name -> version
    _contents: dict[str, dict[str, Entry]] = field(default_factory=dict, repr=False)

    def children(self, cid: str) -> list[Cont]:
        return sorted((c for c in self.containers.values() if c.parent == cid), key=lambda c: c.id)

    def content(self, cid: str) -> dict[str, Entry]:
        """The names of container directory `cid`, by SEMANTICS *Names*."""
        if cid not in self._contents:
            files = sorted(self.files.get(cid, {}))
            named = entry_names(self.children(cid), files, reserved=True)
            self._contents[cid] = {
                name: ("file", cid, item) if isinstance(item, str) else ("dir", item.id)
                for name, item in named.items()
            }
        return self._contents[cid]

    def name_of(self, entry: Entry, parent: str) -> str | None:
        for name, e in self.content(parent).items():
            if e == entry:
                return name
        return None

    def path_of(self, cid: str) -> list[str] | None:
        """The names from the group (its id) down to container `cid` in this snapshot."""
        parts: list[str] = []
        c = self.containers.get(cid)
        while c is not None and c.parent is not None:
            name = self.name_of(("dir", c.id), c.parent)
            if name is None:
                return None
            parts.append(name)
            c = self.containers.get(c.parent)
        if c is None:
            return None
        return [c.id, *reversed(parts)]

    # Changes: each returns a new snapshot, sharing what did not change.

    def put_file(self, cid: str, rec: FileRec) -> Snapshot:
        files = dict(self.files)
        files[cid] = {**files.get(cid, {}), rec.name: rec}
        return Snapshot(self.containers, files)

    def drop_file(self, cid: str, name: str) -> Snapshot:
        files = dict(self.files)
        files[cid] = {k: v for k, v in files.get(cid, {}).items() if k != name}
        return Snapshot(self.containers, files)

    def put_container(self, c: Cont) -> Snapshot:
        return Snapshot({**self.containers, c.id: c}, self.files)


# ---- what a mount may answer --------------------------------------------------------------

# ("dir", cid) | ("file", cid, raw, FileRec) | ("zdir", FileRec, prefix, (cid, raw))
# | ("member", FileRec, path, (cid, raw)) | ("enoent",) | ("enotdir",)
Outcome = tuple[Any, ...]
ENOENT: Outcome = ("enoent",)
ENOTDIR: Outcome = ("enotdir",)


def outcome_key(o: Outcome) -> tuple[Any, ...]:
    if o[0] == "file":
        return ("file", o[1], o[2], id(o[3]))
    if o[0] in ("zdir", "member"):
        return (o[0], id(o[1]), o[2])
    return o


@dataclass
class Change:
    t_start: float
    t_end: float
    snap: Snapshot
    what: str


class SiteModel:
    def __init__(self, first: Snapshot, ttl: float, slack: float) -> None:
        self.ttl = ttl
        self.slack = slack
        self.history: list[Change] = [Change(float("-inf"), float("-inf"), first, "before")]
        self.listing_floor: dict[str, int] = {}
        self.path_floor: dict[tuple[str, ...], int] = {}
        # (cid, raw name) -> index of the last change that deleted or moved that file away.
        self.removed: dict[tuple[str, str], int] = {}

    @property
    def latest(self) -> Snapshot:
        return self.history[-1].snap

    def change(
        self,
        t_start: float,
        t_end: float,
        snap: Snapshot,
        what: str,
        *,
        listings: Iterable[str] = (),
        paths: Iterable[str] = (),
        removed: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Record the site's new state. `listings` (container ids) and `paths` (as used)
        are what the mount changed itself: from now on their answers must show this state
        or a later one."""
        self.history.append(Change(t_start, t_end, snap, what))
        index = len(self.history) - 1
        for cid in listings:
            self.listing_floor[cid] = index
        for path in paths:
            self.path_floor[tuple(path.split("/"))] = index
        for key in removed:
            self.removed[key] = index
        return index

    def window(self, t: float) -> int:
        """The oldest snapshot an answer given at time `t` may still show."""
        oldest = t - self.ttl - self.slack
        for i in range(len(self.history) - 1):
            if self.history[i + 1].t_end > oldest:
                return i
        return len(self.history) - 1

    def views(self, cid: str, t: float, path: tuple[str, ...] | None = None) -> list[Snapshot]:
        """The snapshots an answer about directory `cid` at time `t` may come from: its
        listing (`path` None) or the lookup of `path`, a name in it."""
        lo = self.window(t)
        if path is None:
            lo = max(lo, self.listing_floor.get(cid, 0))
        else:
            lo = max(lo, self.path_floor.get(path, 0))
        return [c.snap for c in self.history[lo:]]

    def settled(self, t: float) -> bool:
        """No answer at `t` may show anything but the latest state."""
        return self.window(t) == len(self.history) - 1

    def removed_since(self, key: tuple[str, str], t: float) -> bool:
        """The file was deleted or moved away at a change a view at `t` may predate."""
        return self.removed.get(key, -1) > self.window(t)

    # ---- resolution ---------------------------------------------------------------------

    def resolve(self, parts: list[str], t: float) -> list[Outcome]:
        """Every answer the contract allows for the path `parts` (from the group down)."""
        group = parts[0]
        assert self.latest.containers[group].kind == "group"
        states: dict[tuple[Any, ...], Outcome] = {("dir", group): ("dir", group)}
        for i, part in enumerate(parts[1:], 2):
            after: dict[tuple[Any, ...], Outcome] = {}
            for state in states.values():
                for o in self._step(state, part, tuple(parts[:i]), t):
                    after[outcome_key(o)] = o
            states = after
        return list(states.values())

    def _step(self, state: Outcome, part: str, path: tuple[str, ...], t: float) -> list[Outcome]:
        kind = state[0]
        if kind in ("enoent", "enotdir"):
            return [state]
        if kind in ("file", "member"):
            return [ENOTDIR]
        if kind == "zdir":
            rec, prefix, key = state[1], state[2], state[3]
            assert rec.members is not None
            member = prefix + part
            if member in rec.members:
                return [("member", rec, member, key)]
            if any(m.startswith(member + "/") for m in rec.members):
                return [("zdir", rec, member + "/", key)]
            return [ENOENT]
        cid = state[1]
        out: list[Outcome] = []
        alias = _ALIAS.fullmatch(part)
        for snap in self.views(cid, t, path):
            content = snap.content(cid)
            entry = content.get(part)
            if entry is not None:
                out.append(self._outcome(snap, entry))
            elif alias is not None:
                # Not listed: one lookup on the site, which holds the latest state.
                child = self.latest.containers.get(alias.group(1))
                found = child is not None and child.parent == cid
                out.append(("dir", child.id) if found and child else ENOENT)
            elif part.endswith(".d") and part[:-2] in content:
                base = self._outcome(snap, content[part[:-2]])
                zipped = base[0] == "file" and is_zip_name(part[:-2])
                if zipped and base[3].members is not None:
                    out.append(("zdir", base[3], "", (base[1], base[2])))
                else:
                    out.append(ENOENT)
            else:
                out.append(ENOENT)
        return out

    @staticmethod
    def _outcome(snap: Snapshot, entry: Entry) -> Outcome:
        if entry[0] == "dir":
            return ("dir", entry[1])
        return ("file", entry[1], entry[2], snap.files[entry[1]][entry[2]])

    def listings(self, outcome: Outcome, t: float) -> list[list[str]]:
        """The name lists readdir of a directory outcome may return."""
        if outcome[0] == "zdir":
            rec, prefix = outcome[1], outcome[2]
            names = {m[len(prefix) :].split("/")[0] for m in rec.members if m.startswith(prefix)}
            return [sorted(names)]
        assert outcome[0] == "dir"
        found: dict[tuple[str, ...], list[str]] = {}
        for snap in self.views(outcome[1], t):
            listing = sorted(snap.content(outcome[1]))
            found[tuple(listing)] = listing
        return list(found.values())

    # ---- what there is to look at -------------------------------------------------------

    def paths(self, project: str, depth: int = 3) -> dict[str, str]:
        """Paths (relative to the mount) worth asking about, with what they were: "dir" or
        "file" (archive members included), everything under `project` in the latest few
        snapshots, and id aliases of the containers."""
        found: dict[str, str] = {}
        for change in self.history[-depth:]:
            snap = change.snap
            base = snap.path_of(project)
            if base is None:
                continue
            found[base[0]] = "dir"
            self._walk(snap, project, "/".join(base), found)
        return dict(sorted(found.items()))

    def _walk(self, snap: Snapshot, cid: str, path: str, found: dict[str, str]) -> None:
        found[path] = "dir"
        for name, entry in snap.content(cid).items():
            sub = f"{path}/{name}"
            if entry[0] == "dir":
                found[f"{path}/<id:{entry[1]}>"] = "dir"
                self._walk(snap, entry[1], sub, found)
                continue
            found[sub] = "file"
            rec = snap.files[cid][entry[2]]
            if rec.members is not None and is_zip_name(name):
                found[sub + ".d"] = "dir"
                for member in rec.members:
                    bits = member.split("/")
                    for i in range(1, len(bits)):
                        found[f"{sub}.d/" + "/".join(bits[:i])] = "dir"
                    found[f"{sub}.d/{member}"] = "file"

    def describe(self, last: int = 6) -> str:
        lines = []
        start = max(0, len(self.history) - last)
        for i, c in enumerate(self.history[start:], start):
            lines.append(f"  #{i} {c.what} [{c.t_start:.2f}, {c.t_end:.2f}]")
        return "\n".join(lines)
