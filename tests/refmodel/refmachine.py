"""The reference model's state machine (issue 7 item 2; issue 13 item 1): one machine, two
targets (reftargets.py). Hypothesis drives a writable fwfs, a real FUSE mount or FlywheelFS
itself, over a private sandbox site with a short metadata TTL, changes the site behind its
back through the SDK between steps, and checks every answer against a model of the site and
the rules of docs/SEMANTICS.md (refmodel.py):

* listings, `stat`, extended attributes: those of some state of the site that was current
  within the TTL (the mount may show the old state only until then), and of the latest
  one for what the mount changed itself;
* bytes (`pread` at random offsets, `mmap` on a mount): exactly those of one version that
  was current within the TTL when the file was opened, never a mix, never short; an open
  file keeps its version while new ones are uploaded and listed;
* writes: create, write and close, then the SDK has the exact bytes; a rename of a file
  just written (still open, or uploaded); mkdir of a subject, session or acquisition; an
  overwrite is version N+1; an existing name is EEXIST;
* faults (a target with a `FaultyClient`: the model tier): a look that meets a typed
  error, a short body or a version swapped between two reads answers as the model allows
  or fails with that fault's errno, and the same look right after answers as the model
  allows.

Behind the mount's back: new versions, new files whose names collide (with a sibling
container's label, the reserved `analyses`, an escaped `/`), deleted files, relabelled
containers (to a sibling's label, `analyses`, a label with `/`) and new sessions.

Time is the target's: a mount's is the monotonic clock (waits sleep), the model tier's a
`Clock` the machine advances (waits cost nothing).
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flywheel
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from refmodel import (
    CHILD_KIND,
    ENOENT,
    ENOTDIR,
    GROUP,
    Cont,
    FileRec,
    Outcome,
    SiteModel,
    Snapshot,
    file_rec,
    zip_bytes,
)
from reftargets import Driver
from targets import Stat

from fwfs.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    RemoteUnavailable,
    StaleFile,
)
from fwfs.testing.faults import Fault, Raise, ShortBody, SwapVersion

MAX_HANDLES = 3
SIZES = st.one_of(
    st.sampled_from([0, 1, 4095, 4096, 131_071, 131_072, 131_073, 262_151]),
    st.integers(0, 300_000),
)


def errno_name(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, str(err.errno))


@dataclass
class Figures:
    steps: int = 0
    checked: Counter[str] = field(default_factory=Counter)
    bytes_verified: int = 0
    site_changes: Counter[str] = field(default_factory=Counter)
    examples: int = 0
    waits: int = 0
    faults_armed: Counter[str] = field(default_factory=Counter)
    faults_fired: Counter[str] = field(default_factory=Counter)
    faults_met: Counter[str] = field(default_factory=Counter)  # by errno

    def summary(self) -> dict[str, object]:
        return {
            "examples": self.examples,
            "steps": self.steps,
            "waits": self.waits,
            "operations checked": dict(sorted(self.checked.items())),
            "bytes verified": self.bytes_verified,
            "site changes": dict(sorted(self.site_changes.items())),
            "faults armed": dict(sorted(self.faults_armed.items())),
            "faults fired": dict(sorted(self.faults_fired.items())),
            "faults met (errno)": dict(sorted(self.faults_met.items())),
        }


@dataclass(frozen=True)
class ReadPlan:
    whole: bool  # read it all at once first
    reads: list[tuple[int | float, int]]  # (offset, or a fraction of the size; length)
    mmap: list[tuple[float, int]]  # reads through mmap (empty: none)


LENGTHS = st.one_of(st.integers(1, 300_000), st.sampled_from([1, 4096, 131_072]))
OFFSETS = st.one_of(st.floats(0, 1.05), st.sampled_from([0, 4095, 131_072, 131_073]))
READ_PLANS = st.builds(
    ReadPlan,
    whole=st.booleans(),
    reads=st.lists(st.tuples(OFFSETS, LENGTHS), max_size=4),
    mmap=st.one_of(
        st.just([]), st.lists(st.tuples(st.floats(0, 1), LENGTHS), min_size=1, max_size=3)
    ),
)


@dataclass
class Handle:
    """A file open for reading across steps, with the versions it may be reading."""

    fd: int
    path: str
    keys: set[tuple[str, str]]  # (container id, raw name) of the file or its archive
    candidates: list[tuple[str, bytes]]  # (what, bytes): narrowed by every read
    opened_at: float


# Faults of the site client (fwfs.testing.faults) a look may meet. The classes are those a
# client raises; a NotFound from a read is ENOENT as the site's 404 is.
_ERRORS = st.sampled_from(
    [RemoteError, RemoteUnavailable, PermissionDenied, NotFound, StaleFile, InvalidArgument]
)
_CALLS = st.integers(1, 3)
# What the look that meets it is, by fault: a listing's resolve fails an `ls` or a `stat`
# (the machine lets the listings expire first, so that one is made), a ranged read a read.
_READ = st.just("read")
_READS = st.integers(1, 2)  # a small file is one ranged read
FAULTS: st.SearchStrategy[tuple[str, Fault]] = st.one_of(
    st.tuples(
        st.sampled_from(["ls", "stat"]), st.builds(Raise, st.just("resolve"), _ERRORS, _CALLS)
    ),
    st.tuples(_READ, st.builds(Raise, st.just("read_range"), _ERRORS, _READS)),
    st.tuples(_READ, st.builds(ShortBody, st.just("read_range"), st.integers(0, 5000), _READS)),
    st.tuples(_READ, st.builds(SwapVersion, st.just("read_range"), st.just(b""), _READS)),
)


def machine(
    site: Any, target: Driver, figures: Figures, looks_per_change: int = 0
) -> type[RuleBasedStateMachine]:
    """The machine for `target`. `looks_per_change`: steps that only look (list, stat,
    read, wait, meet a fault) between two that may change the site or write, so a cheap
    target spends its steps on many looks at each state rather than on the SDK."""
    fw = site.client()
    counter = iter(range(1, 1 << 30))

    class ReferenceModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model: SiteModel | None = None
            self.project = ""
            self.handles: list[Handle | None] = []
            self.counter = iter(range(1, 1 << 30))
            self.started = False
            self.step = 0
            # Errnos an armed fault may cause, beside those the model allows.
            self.tolerate: set[int] = set()

        # ---- helpers ------------------------------------------------------------------

        @property
        def m(self) -> SiteModel:
            assert self.model is not None
            return self.model

        def fresh(self, prefix: str) -> str:
            # Per example: names sort the same way when Hypothesis replays it.
            return f"{prefix}-{next(self.counter)}"

        def payload(self, data: Any, name: str) -> bytes:
            rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label="seed"))
            if name.lower().endswith(".zip"):
                members = {"a.txt": rng.randbytes(rng.randrange(0, 3000))}
                members["dir/b.bin"] = rng.randbytes(rng.randrange(1, 40_000))
                if rng.random() < 0.5:
                    members["dir/sub/c.bin"] = rng.randbytes(rng.randrange(1, 20_000))
                return zip_bytes(members, compress=rng.random() < 0.5)
            return rng.randbytes(data.draw(SIZES, label="size"))

        def site_files(self, cid: str) -> dict[str, Any]:
            return {f.name: f for f in fw.get(cid).files}

        def verify_site_bytes(self, cid: str, name: str, expected: bytes) -> None:
            got = fw.download_file_from_container_as_data(cid, name)
            assert got == expected, f"the site holds other bytes for {name!r} in {cid}"
            figures.bytes_verified += len(expected)

        def synced(self, snap: Snapshot, cid: str) -> Snapshot:
            """`snap` with the versions the site reports for `cid`'s files, after checking
            that the site holds exactly the files and sizes the model predicts."""
            site = self.site_files(cid)
            mine = snap.files.get(cid, {})
            assert {n: f.size for n, f in site.items()} == {n: r.size for n, r in mine.items()}
            for name, rec in mine.items():
                version = site[name].version
                if version != rec.version:
                    snap = snap.put_file(cid, FileRec(name, rec.data, version, rec.members))
            return snap

        def containers(self, *kinds: str) -> list[Cont]:
            snap = self.m.latest
            mine = [c for c in snap.containers.values() if self.under_project(snap, c)]
            return sorted((c for c in mine if c.kind in kinds), key=lambda c: c.id)

        def under_project(self, snap: Snapshot, c: Cont) -> bool:
            while c.parent is not None and c.id != self.project:
                c = snap.containers[c.parent]
            return c.id == self.project

        def files(self) -> list[tuple[str, str]]:
            snap = self.m.latest
            ids = {c.id for c in self.containers("project", "subject", "session", "acquisition")}
            return sorted((cid, n) for cid in ids for n in snap.files.get(cid, {}))

        def dir_path(self, data: Any, cid: str) -> str:
            """A path to container `cid` that the mount resolves to it alone: by names
            (waiting until they are settled) or by an id alias."""
            snap = self.m.latest
            if snap.containers[cid].kind == "group":
                return cid
            if data.draw(st.booleans(), label="by alias"):
                parent = snap.containers[cid].parent
                assert parent is not None
                return f"{self.dir_path(data, parent)}/<id:{cid}>"
            parts = snap.path_of(cid)
            assert parts is not None
            self.settle(lambda t: self.m.resolve(parts, t) == [("dir", cid)])
            return "/".join(parts)

        def file_path(self, data: Any, cid: str, name: str) -> str:
            folder = self.dir_path(data, cid)
            display = self.m.latest.name_of(("file", cid, name), cid)
            assert display is not None

            def unique(t: float) -> bool:
                outs = self.m.resolve([*folder.split("/"), display], t)
                return {(o[0], *o[1:3]) for o in outs} == {("file", cid, name)}

            self.settle(unique)
            return f"{folder}/{display}"

        def released(self, path: str, version: int) -> None:
            """Wait until the mount has finished the release of an empty file: until then
            it shows the staged file, which has no version yet (ENODATA)."""

            def shown() -> bool:
                try:
                    return target.getxattr(path, "user.flywheel.version") == str(version).encode()
                except OSError:
                    return False

            target.wait_for(shown, "the mount showing the uploaded empty file")

        def settle(self, ready: Callable[[float], bool]) -> None:
            """Wait until the mount can only answer as `ready` wants (bounded: once the TTL
            has passed since the last change, it shows the latest state)."""
            while not ready(target.now()):
                assert not self.m.settled(target.now()), "the latest state does not resolve"
                target.pause(0.1)

        def change(self, t0: float, snap: Snapshot, what: str, **floors: Any) -> None:
            self.m.change(t0, target.now(), snap, what, **floors)
            figures.site_changes[what] += 1

        def may_change(self) -> bool:
            return self.step % (looks_per_change + 1) == 0

        def tolerated(self, err: OSError) -> bool:
            """An errno the armed fault may cause (only while one is armed)."""
            if err.errno not in self.tolerate:
                return False
            figures.faults_met[errno_name(err)] += 1
            return True

        def fail(self, what: str, path: str, got: object, allowed: object) -> None:
            raise AssertionError(
                f"{what} {path!r}: got {got!r}\nallowed: {allowed!r}\nrecent changes:\n"
                f"{self.m.describe()}"
            )

        # ---- set-up -------------------------------------------------------------------

        @initialize(data=st.data())
        def make_tree(self, data: Any) -> None:
            """A group and project of its own (an example's listings stay the size of its
            own tree however many ran before): subjects, sessions, acquisitions, random
            files and a zip, made through the SDK."""
            figures.examples += 1
            gid = f"{GROUP}-{next(counter)}"
            fw.add_group(flywheel.Group(gid, "Reference model"))
            before = Snapshot({gid: Cont(gid, "group", gid, None)}, {})
            t0 = target.now()
            label = "P"
            project = fw.get_group(gid).add_project(label=label)
            snap = before.put_container(Cont(project.id, "project", label, gid))
            self.project = project.id
            layout = {
                "sub-01": {"ses-01": ["anat", "func"]},
                "sub-02": {"ses-01": ["anat"]},
            }
            files = {project.id: ["notes.txt"]}
            for sub_label, sessions in layout.items():
                subject = project.add_subject(label=sub_label)
                snap = snap.put_container(Cont(subject.id, "subject", sub_label, project.id))
                for ses_label, acquisitions in sessions.items():
                    session = subject.add_session(label=ses_label)
                    snap = snap.put_container(Cont(session.id, "session", ses_label, subject.id))
                    files[session.id] = ["log.txt"]
                    for acq_label in acquisitions:
                        acq = session.add_acquisition(label=acq_label)
                        made = Cont(acq.id, "acquisition", acq_label, session.id)
                        snap = snap.put_container(made)
                        anat = acq_label == "anat"
                        files[acq.id] = ["scan.zip", "t1.bin"] if anat else ["bold.bin"]
            for cid, names in files.items():
                for name in names:
                    body = self.payload(data, name)
                    fw.upload_file_to_container(cid, flywheel.FileSpec(name, body))
                    snap = snap.put_file(cid, file_rec(name, body, 1))
            self.model = SiteModel(before, target.ttl, target.slack)
            self.m.change(t0, target.now(), snap, "setup")
            figures.site_changes["setup files"] += sum(len(n) for n in files.values())

        def teardown(self) -> None:
            for h in self.handles:
                if h is not None:
                    target.close(h.fd)
            self.handles.clear()

        # ---- looking: listings, stat, xattrs ------------------------------------------

        def check_listdir(self, rel: str) -> list[str]:
            t = target.now()
            outcomes = self.m.resolve(rel.split("/"), t)
            try:
                entries = target.scandir(rel)
            except OSError as err:
                if self.tolerated(err):
                    return []
                got: object = errno_name(err)
                allowed = {"ENOENT" for o in outcomes if o == ENOENT}
                allowed |= {"ENOTDIR" for o in outcomes if o[0] in ("file", "member", "enotdir")}
                if got not in allowed:
                    self.fail("listdir", rel, got, outcomes)
                figures.checked["listdir"] += 1
                return []
            names = sorted(entries)
            folders = [o for o in outcomes if o[0] in ("dir", "zdir")]
            options = [n for o in folders for n in self.m.listings(o, t)]
            if names not in options:
                self.fail("listdir", rel, names, options)
            # d_type: containers and member directories are directories, files are not.
            for name, is_dir in entries.items():
                kinds = {o[0] for o in self.m.resolve([*rel.split("/"), name], t)}
                want = {k in ("dir", "zdir") for k in kinds if k not in ("enoent", "enotdir")}
                assert is_dir in want, f"{rel}/{name}: is_dir {is_dir}, resolves to {kinds}"
            figures.checked["listdir"] += 1
            return names

        def open_sizes(self, cid: str, name: str) -> set[int]:
            return {
                len(c[1])
                for h in self.handles
                if h is not None and (cid, name) in h.keys
                for c in h.candidates
            }

        def matches_stat(self, o: Outcome, st_: Stat, rel: str) -> bool:
            kind, perm = stat.S_IFMT(st_.mode), stat.S_IMODE(st_.mode)
            if o[0] == "dir":
                return kind == stat.S_IFDIR and perm == 0o755
            if o[0] == "zdir":
                return kind == stat.S_IFDIR and perm == 0o555
            if o[0] == "file":
                sizes = {o[3].size} | self.open_sizes(o[1], o[2])
                return kind == stat.S_IFREG and perm == 0o644 and st_.size in sizes
            if o[0] == "member":
                # As for a file: while a member is open by this path, its size stands
                # (found by the model tier: v1's member, open, stat after v2 settled).
                sizes = {len(o[1].members[o[2]])}
                sizes |= {
                    len(c[1]) for h in self.handles if h and h.path == rel for c in h.candidates
                }
                return kind == stat.S_IFREG and perm == 0o444 and st_.size in sizes
            return False

        def check_stat(self, rel: str) -> None:
            t = target.now()
            outcomes = self.m.resolve(rel.split("/"), t)
            try:
                st_ = target.stat(rel)
            except OSError as err:
                if self.tolerated(err):
                    return
                wanted = {errno.ENOENT: ENOENT, errno.ENOTDIR: ENOTDIR}.get(err.errno or 0)
                if wanted not in outcomes:
                    self.fail("stat", rel, errno_name(err), outcomes)
                figures.checked["stat"] += 1
                return
            found = [o for o in outcomes if self.matches_stat(o, st_, rel)]
            if not found:
                self.fail("stat", rel, (oct(st_.mode), st_.size), outcomes)
            figures.checked["stat"] += 1
            # Extended attributes, from the same listing (they may not be older).
            try:
                if stat.S_ISDIR(st_.mode) and any(o[0] == "dir" for o in found):
                    got = target.getxattr(rel, "user.flywheel.id").decode()
                    ids = {o[1] for o in outcomes if o[0] == "dir"}
                    if got not in ids:
                        self.fail("user.flywheel.id of", rel, got, ids)
                    figures.checked["xattr"] += 1
                elif any(o[0] == "file" for o in found):
                    version = int(target.getxattr(rel, "user.flywheel.version"))
                    raw = target.getxattr(rel, "user.flywheel.name").decode()
                    files = {(o[2], o[3].version) for o in outcomes if o[0] == "file"}
                    if (raw, version) not in files:
                        self.fail("name and version of", rel, (raw, version), files)
                    figures.checked["xattr"] += 1
            except OSError as err:
                if self.tolerated(err):
                    return
                if err.errno != errno.ENOENT or ENOENT not in outcomes:
                    raise

        def look(self, data: Any) -> None:
            """A few looks between changes: they fill the mount's caches, which the next
            change then makes stale."""
            for kind in data.draw(
                st.lists(st.sampled_from(["ls", "stat", "read"]), max_size=3), label="looks"
            ):
                if kind == "ls":
                    self.list_a_directory(data)
                elif kind == "stat":
                    self.stat_a_path(data)
                elif self.readable():
                    self.read_one(data, data.draw(st.sampled_from(self.readable()), label="file"))

        @rule(data=st.data())
        def list_a_directory(self, data: Any) -> None:
            """`ls`, or `ls -l`: readdir, then stat of every entry."""
            every = self.m.paths(self.project)
            # Mostly directories; now and then a file (ENOTDIR).
            kind = data.draw(st.sampled_from(["dir"] * 4 + ["file"]), label="kind")
            paths = [p for p, k in every.items() if k == kind] or list(every)
            rel = data.draw(st.sampled_from(paths), label="dir")
            long = data.draw(st.booleans(), label="-l")
            names = self.check_listdir(rel)
            if long:
                for name in names:
                    self.check_stat(f"{rel}/{name}")

        @rule(data=st.data())
        def stat_a_path(self, data: Any) -> None:
            paths = list(self.m.paths(self.project))
            self.check_stat(data.draw(st.sampled_from(paths), label="path"))

        @rule(pause=st.sampled_from([0.2, 1.0, target.ttl + target.slack]))
        def wait(self, pause: float) -> None:
            """Let time pass: listings expire, and the contract then wants the new state."""
            target.pause(pause)
            figures.waits += 1

        # ---- faults (a target that takes them: the model tier) -------------------------

        @precondition(lambda self: target.faults is not None)
        @rule(data=st.data())
        def a_look_meets_a_fault(self, data: Any) -> None:
            """One look (`ls`, `stat` or a read) with a fault armed in the site client: it
            answers as the model allows, or fails with the fault's errno (EIO for a short
            body: never short bytes). Then the fault is dropped and the same look must
            answer as the model allows: no failure is kept (SEMANTICS *Errors*)."""
            faults = target.faults
            assert faults is not None
            look, fault = data.draw(FAULTS, label="fault")
            plan = self.plan(data)
            if isinstance(fault, SwapVersion):
                # A new version of the file being read, between two of its reads.
                if not self.files():
                    return
                cid, name = data.draw(st.sampled_from(self.files()), label="file")
                rel = self.file_path(data, cid, name)
                fault = SwapVersion(fault.method, self.payload(data, name), fault.call, name)
            else:
                kinds = {"ls": ("dir",), "stat": ("dir", "file"), "read": ("file",)}[look]
                every = self.m.paths(self.project)
                rel = data.draw(st.sampled_from([p for p, k in every.items() if k in kinds]))
            if look == "read":
                target.forget_bytes()  # so that the read is made, and meets the fault
            else:
                target.pause(target.ttl)  # so that the listing is made
            figures.faults_armed[type(fault).__name__] += 1
            t0 = target.now()
            faults.arm(fault)
            self.tolerate = {errno.EIO} if isinstance(fault, ShortBody) else set()
            if isinstance(fault, Raise):
                self.tolerate = {fault.error.errno}
            try:
                self.one_look(look, rel, plan)
            finally:
                self.tolerate = set()
                faults.disarm()
                self.record_swaps(t0, fault)
            if faults.fired:
                figures.faults_fired[type(fault).__name__] += 1
                faults.fired.clear()
            self.one_look(look, rel, plan)
            figures.checked["look again after a fault"] += 1

        def one_look(self, look: str, rel: str, plan: ReadPlan) -> None:
            if look == "ls":
                self.check_listdir(rel)
            elif look == "stat":
                self.check_stat(rel)
            else:
                h = self.open_file(rel)
                if h is not None:
                    try:
                        self.read_some(h, plan)
                    finally:
                        target.close(h.fd)

        def record_swaps(self, t0: float, fault: Fault) -> None:
            """The model learns of the version a SwapVersion uploaded (to whichever file of
            that name a read reached first, ahead of a walk or not)."""
            faults = target.faults
            assert faults is not None
            fired = sum(isinstance(f, SwapVersion) for f in faults.fired)
            target.wait_for(lambda: len(faults.swapped) >= fired, "the swapped version")
            mine = {c.id for c in self.containers("project", "subject", "session", "acquisition")}
            for cid, name in faults.swapped:
                assert isinstance(fault, SwapVersion) and cid in mine, (cid, name)
                old = self.m.latest.files[cid][name]
                snap = self.m.latest.put_file(cid, file_rec(name, fault.data, old.version + 1))
                self.change(t0, self.synced(snap, cid), "new version (fault)")
            faults.swapped.clear()

        # ---- reading ------------------------------------------------------------------

        def open_file(self, rel: str) -> Handle | None:
            """Open for reading, or check the error; None when there is nothing to read."""
            t = target.now()
            outcomes = self.m.resolve(rel.split("/"), t)
            try:
                fd = target.open(rel, os.O_RDONLY)
            except OSError as err:
                if self.tolerated(err):
                    return None
                allowed = {"ENOENT": ENOENT in outcomes, "ENOTDIR": ENOTDIR in outcomes}
                if not allowed.get(errno_name(err)):
                    self.fail("open", rel, errno_name(err), outcomes)
                figures.checked["open refused"] += 1
                return None
            st_ = target.fstat(fd)
            if stat.S_ISDIR(st_.mode):
                target.close(fd)
                if not any(o[0] in ("dir", "zdir") for o in outcomes):
                    self.fail("open", rel, "a directory", outcomes)
                return None
            candidates: list[tuple[str, bytes]] = []
            keys = set()
            for o in outcomes:
                if o[0] == "file":
                    candidates.append((f"{o[2]!r} v{o[3].version}", o[3].data))
                    keys.add((o[1], o[2]))
                elif o[0] == "member":
                    candidates.append((f"member {o[2]} of {o[1]!r}", o[1].members[o[2]]))
                    keys.add(o[3])
            if not candidates:
                target.close(fd)
                self.fail("open", rel, "a file", outcomes)
            # While it is open, the handle shows the size of the version it reads; or, when
            # another version of the path is open already, that one's (SEMANTICS: the
            # newer one is then read with direct I/O, past the older one's size).
            sizes = {len(c[1]) for c in candidates}
            others = {n for key in keys for n in self.open_sizes(*key)}
            if st_.size not in sizes | others:
                target.close(fd)
                self.fail("fstat of the open", rel, st_.size, sorted(sizes | others))
            if st_.size not in others:
                candidates = [c for c in candidates if len(c[1]) == st_.size]
            figures.checked["open"] += 1
            return Handle(fd, rel, keys, candidates, t)

        def gone(self, h: Handle) -> bool:
            """Deleted or moved away since a view its open may have come from."""
            return any(self.m.removed_since(key, h.opened_at) for key in h.keys)

        def check_read(self, h: Handle, offset: int, length: int) -> None:
            try:
                got = target.pread(h.fd, length, offset)
            except OSError as err:
                if self.tolerated(err):
                    return
                # Right bytes or a clear error: only a file deleted meanwhile may fail.
                if not (self.gone(h) and err.errno in (errno.ENOENT, errno.ESTALE)):
                    what = f"pread({length}, {offset}) of"
                    self.fail(what, h.path, errno_name(err), h.candidates)
                figures.checked["read of a removed file refused"] += 1
                return
            kept = [c for c in h.candidates if c[1][offset : offset + length] == got]
            if not kept:
                wants = [(w, len(b[offset : offset + length])) for w, b in h.candidates]
                self.fail(f"pread({length}, {offset}) of", h.path, f"{len(got)} bytes", wants)
            h.candidates = kept
            figures.checked["pread"] += 1
            figures.bytes_verified += len(got)

        def check_mmap(self, h: Handle, plan: list[tuple[float, int]]) -> None:
            size = len(h.candidates[0][1])
            if size == 0 or self.gone(h):
                return  # nothing to map; or a page that cannot be read would be SIGBUS
            try:
                mapping = target.mmap(h.fd)
            except OSError as err:
                # SEMANTICS: a newer version opened while an older one is open reads with
                # direct I/O, past the page cache, and such a file cannot be mapped.
                others = [o for o in self.handles if o is not None and o is not h]
                if err.errno != errno.ENODEV or not any(o.path == h.path for o in others):
                    raise
                figures.checked["mmap refused beside an older open version"] += 1
                return
            if mapping is None:
                return  # a target without a page cache
            with mapping as mm:
                assert len(mm) == size
                for where, length in plan:
                    offset = min(int(where * size), size - 1)
                    got = mm[offset : offset + length]
                    kept = [c for c in h.candidates if c[1][offset : offset + length] == got]
                    if not kept:
                        self.fail(f"mmap[{offset}:+{length}] of", h.path, len(got), h.candidates)
                    h.candidates = kept
                    figures.bytes_verified += len(got)
            figures.checked["mmap"] += 1

        def plan(self, data: st.DataObject) -> ReadPlan:
            """What to read, drawn before the file is opened: the draws must not depend on
            the mount's answers, or Hypothesis cannot replay a run."""
            return data.draw(READ_PLANS, label="read plan")

        def read_some(self, h: Handle, plan: ReadPlan) -> None:
            size = len(h.candidates[0][1])
            if plan.whole:
                self.check_read(h, 0, size + 1)
            for where, length in plan.reads:
                offset = where if isinstance(where, int) else int(where * size)
                self.check_read(h, offset, length)
            if plan.mmap:
                self.check_mmap(h, plan.mmap)

        def readable(self) -> list[str]:
            return [p for p, kind in self.m.paths(self.project).items() if kind == "file"]

        @precondition(lambda self: bool(self.readable()))
        @rule(data=st.data())
        def read_files(self, data: Any) -> None:
            """open, pread at random offsets (or all of it), maybe mmap, close; a few files."""
            files = self.readable()
            for rel in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=3)):
                self.read_one(data, rel)

        def read_one(self, data: Any, rel: str) -> None:
            plan = self.plan(data)
            h = self.open_file(rel)
            if h is None:
                return
            try:
                self.read_some(h, plan)
            finally:
                target.close(h.fd)

        @precondition(lambda self: len(self.handles) < MAX_HANDLES and bool(self.readable()))
        @rule(data=st.data())
        def open_and_keep(self, data: Any) -> None:
            # A failed open keeps its slot (None): which rules can run next must not depend
            # on the mount's answers.
            self.handles.append(self.open_file(data.draw(st.sampled_from(self.readable()))))

        @precondition(lambda self: bool(self.handles))
        @rule(data=st.data())
        def read_an_open_file(self, data: Any) -> None:
            """An open file keeps its version, whatever happened since it was opened."""
            i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
            plan = self.plan(data)
            h = self.handles[i]
            if h is not None:
                self.read_some(h, plan)

        @precondition(lambda self: bool(self.handles))
        @rule(data=st.data())
        def close_a_file(self, data: Any) -> None:
            self.look(data)
            h = self.handles.pop(data.draw(st.integers(0, len(self.handles) - 1), label="handle"))
            if h is not None:
                target.close(h.fd)

        # ---- behind the mount's back: the SDK -----------------------------------------

        def upload(self, cid: str, name: str, body: bytes, what: str) -> None:
            t0 = target.now()
            fw.upload_file_to_container(cid, flywheel.FileSpec(name, body))
            old = self.m.latest.files.get(cid, {}).get(name)
            snap = self.m.latest.put_file(cid, file_rec(name, body, old.version + 1 if old else 1))
            self.change(t0, self.synced(snap, cid), what)

        @precondition(lambda self: self.may_change())
        @precondition(lambda self: bool(self.files()))
        @rule(data=st.data())
        def site_uploads_a_new_version(self, data: Any) -> None:
            self.look(data)
            cid, name = data.draw(st.sampled_from(self.files()), label="file")
            self.upload(cid, name, self.payload(data, name), "new version (SDK)")

        @precondition(lambda self: self.may_change())
        @rule(data=st.data())
        def site_adds_a_file_with_a_colliding_name(self, data: Any) -> None:
            self.look(data)
            folder = data.draw(
                st.sampled_from(self.containers("project", "subject", "session", "acquisition")),
                label="container",
            )
            snap = self.m.latest
            names = [self.fresh("b") + ".bin", self.fresh("b") + ".zip", "analyses"]
            # A child container's label: the file and the container collide.
            names += [c.label.replace("/", "／") for c in snap.children(folder.id)]
            name = data.draw(st.sampled_from(names), label="name")
            if not name or name in (".", ".."):
                return
            self.upload(folder.id, name, self.payload(data, name), "new file (SDK)")

        @precondition(lambda self: self.may_change())
        @precondition(lambda self: bool(self.files()))
        @rule(data=st.data())
        def site_deletes_a_file(self, data: Any) -> None:
            self.look(data)
            cid, name = data.draw(st.sampled_from(self.files()), label="file")
            t0 = target.now()
            fw.delete_container_file(cid, name)
            snap = self.synced(self.m.latest.drop_file(cid, name), cid)
            self.change(t0, snap, "deleted file (SDK)", removed=[(cid, name)])

        @precondition(lambda self: self.may_change())
        @rule(data=st.data())
        def site_relabels_a_container(self, data: Any) -> None:
            self.look(data)
            c = data.draw(
                st.sampled_from(self.containers("subject", "session", "acquisition")),
                label="container",
            )
            snap = self.m.latest
            assert c.parent is not None
            siblings = [s.label for s in snap.children(c.parent) if s.id != c.id]
            labels = [self.fresh("r"), "analyses", f"x/{self.fresh('y')}", *siblings]
            labels += [n for n in snap.files.get(c.parent, {})]  # a sibling file's name
            labels += [s.replace("/", "／") for s in siblings if "/" in s]
            labels += [s.replace("／", "/") for s in siblings if "／" in s]
            label = data.draw(st.sampled_from(labels), label="label")
            t0 = target.now()
            fw.modify_container(c.id, {"label": label})
            assert fw.get(c.id).label == label
            relabelled = Cont(c.id, c.kind, label, c.parent)
            self.change(t0, snap.put_container(relabelled), "relabelled container (SDK)")

        @precondition(lambda self: self.may_change())
        @rule(data=st.data())
        def site_adds_a_session(self, data: Any) -> None:
            self.look(data)
            subject = data.draw(st.sampled_from(self.containers("subject")), label="subject")
            snap = self.m.latest
            labels = [self.fresh("s"), *(s.label for s in snap.children(subject.id))]
            label = data.draw(st.sampled_from(labels), label="label")
            t0 = target.now()
            session = fw.get(subject.id).add_session(label=label)
            new = Cont(session.id, "session", label, subject.id)
            self.change(t0, snap.put_container(new), "new session (SDK)")

        # ---- through the mount: writes ------------------------------------------------

        @precondition(lambda self: self.may_change())
        @rule(data=st.data())
        def create_write_close(self, data: Any) -> None:
            """A new file: listed with its size while written, uploaded at close, exact
            bytes on the site; maybe renamed while still open (retargeted)."""
            self.look(data)
            folder = data.draw(
                st.sampled_from(self.containers("project", "subject", "session", "acquisition")),
                label="container",
            )
            ext = data.draw(st.sampled_from([".bin", ".zip"]), label="ext")
            name = self.fresh("m") + ext
            body = self.payload(data, name)
            where = self.dir_path(data, folder.id)
            path = f"{where}/{name}"
            cut = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=3), label="cuts"))
            chunks = [body[a:b] for a, b in zip([0, *cut], [*cut, len(body)], strict=True)]
            fd = target.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                written = 0
                for chunk in chunks:
                    assert target.write(fd, chunk) == len(chunk)
                    written += len(chunk)
                    assert target.fstat(fd).size == written
                    assert target.stat(path).size == written, "listed with its current size"
                assert name in target.scandir(where), "listed while being written"
                if data.draw(st.booleans(), label="rename while open"):
                    name = self.fresh("m") + ext
                    target.rename(path, f"{where}/{name}")
                    path = f"{where}/{name}"
                    figures.checked["rename while written"] += 1
                assert name not in self.site_files(folder.id), "uploaded before the close"
            finally:
                t0 = target.now()
                target.close(fd)
            if not body:
                # SEMANTICS *Empty files*: uploaded when the kernel releases the last
                # handle, which it sends after close() has returned.
                target.wait_for(lambda: name in self.site_files(folder.id), "the empty upload")
                self.released(path, 1)
            self.verify_site_bytes(folder.id, name, body)
            snap = self.m.latest.put_file(folder.id, file_rec(name, body, 1))
            snap = self.synced(snap, folder.id)
            rel = f"{where}/{name}"
            self.change(t0, snap, "create (mount)", listings=[folder.id], paths=[rel])
            figures.checked["create"] += 1
            self.check_stat(f"{where}/{name}")
            self.check_listdir(where)

        @precondition(lambda self: self.may_change())
        @rule(data=st.data())
        def rename_a_written_file(self, data: Any) -> None:
            """mv of a file to a free name, in its own or another container directory."""
            self.look(data)
            written = [(c, n) for c, n in self.files() if n.startswith("m-")]
            if not written:
                return
            cid, name = data.draw(st.sampled_from(written), label="file")
            rec = self.m.latest.files[cid][name]
            kinds = ("project", "subject", "session", "acquisition")
            dest = data.draw(
                st.sampled_from([cid, *(c.id for c in self.containers(*kinds))]), label="to"
            )
            src = self.file_path(data, cid, name)
            folder = self.dir_path(data, dest)
            new = self.fresh("m") + ("." + name.split(".", 1)[1] if "." in name else "")
            t0 = target.now()
            target.rename(src, f"{folder}/{new}")
            assert name not in self.site_files(cid)
            self.verify_site_bytes(dest, new, rec.data)
            snap = self.m.latest.drop_file(cid, name)
            snap = snap.put_file(dest, FileRec(new, rec.data, rec.version, rec.members))
            snap = self.synced(self.synced(snap, cid), dest)
            self.change(
                t0,
                snap,
                "rename (mount)",
                listings=[cid, dest],
                paths=[src, f"{folder}/{new}"],
                removed=[(cid, name)],
            )
            figures.checked["rename"] += 1
            self.check_stat(src)
            self.check_stat(f"{folder}/{new}")

        @precondition(lambda self: self.may_change())
        @rule(data=st.data())
        def make_a_directory(self, data: Any) -> None:
            self.look(data)
            parent = data.draw(
                st.sampled_from(self.containers("project", "subject", "session")), label="parent"
            )
            where = self.dir_path(data, parent.id)
            label = self.fresh("m")
            t0 = target.now()
            target.mkdir(f"{where}/{label}")
            cid = target.getxattr(f"{where}/{label}", "user.flywheel.id").decode()
            made = fw.get(cid)
            kind = CHILD_KIND[parent.kind]
            assert (made.container_type, made.label) == (kind, label)
            assert made.parents[parent.kind] == parent.id
            snap = self.m.latest.put_container(Cont(cid, kind, label, parent.id))
            made_at = f"{where}/{label}"
            self.change(t0, snap, "mkdir (mount)", listings=[parent.id], paths=[made_at])
            figures.checked["mkdir"] += 1
            self.check_listdir(where)
            self.check_stat(f"{where}/{label}")
            self.check_listdir(f"{where}/{label}")

        @precondition(lambda self: self.may_change())
        @precondition(lambda self: bool(self.files()))
        @rule(data=st.data())
        def overwrite_a_file(self, data: Any) -> None:
            """O_TRUNC: the site has version N+1 with exactly these bytes."""
            self.look(data)
            cid, name = data.draw(st.sampled_from(self.files()), label="file")
            rel = self.file_path(data, cid, name)
            body = self.payload(data, name)
            t0 = target.now()
            fd = target.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                assert target.write(fd, body) == len(body)
            finally:
                target.close(fd)
            version = self.m.latest.files[cid][name].version + 1
            if not body:
                # Nothing written: uploaded at release, just after close() (as above).
                target.wait_for(
                    lambda: self.site_files(cid)[name].version >= version, "the empty upload"
                )
                self.released(rel, version)
            assert self.site_files(cid)[name].version == version, "not version N+1"
            self.verify_site_bytes(cid, name, body)
            snap = self.synced(self.m.latest.put_file(cid, file_rec(name, body, version)), cid)
            self.change(t0, snap, "overwrite (mount)", listings=[cid], paths=[rel])
            figures.checked["overwrite"] += 1
            self.check_stat(rel)

        @precondition(lambda self: self.may_change())
        @precondition(lambda self: bool(self.files()))
        @rule(data=st.data())
        def existing_names_are_eexist(self, data: Any) -> None:
            self.look(data)
            cid, name = data.draw(st.sampled_from(self.files()), label="file")
            rel = self.file_path(data, cid, name)
            with pytest.raises(FileExistsError):
                target.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            folder = data.draw(
                st.sampled_from(self.containers("subject", "session", "acquisition")), label="dir"
            )
            assert folder.parent is not None
            where = self.dir_path(data, folder.parent)
            display = str(self.m.latest.name_of(("dir", folder.id), folder.parent))
            parts = [*where.split("/"), display]
            self.settle(lambda t: self.m.resolve(parts, t) == [("dir", folder.id)])
            with pytest.raises(FileExistsError):
                target.mkdir(f"{where}/{display}")
            figures.checked["EEXIST"] += 2

        # ---- every step ---------------------------------------------------------------

        @invariant()
        def count_and_check_the_daemon(self) -> None:
            # Invariants run after the set-up too: that one is no step.
            figures.steps += 1 if self.started else 0
            self.step += 1 if self.started else 0
            self.started = True
            assert target.alive(), "the fwfs daemon died"

    return ReferenceModel
