"""The upload state machine (fwfs.uploads.journal), transition by transition.

* The table: every pair of states is allowed or refused exactly as ``ALLOWED`` says, and
  docs/SEMANTICS.md shows that table.
* The code: driving staged files through the public calls of the write path (and the next
  mount's recovery) takes every transition of the table, and no other.
* Kills: a daemon killed in each state, and killed after each step on disk of a commit
  that succeeds or fails, leaves a spool from which the next mount loses no byte.
"""

from __future__ import annotations

import io
import math
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from fwfs.errors import FwfsError, PermissionDenied, RemoteUnavailable
from fwfs.models import Json
from fwfs.uploads import (
    ALLOWED,
    IllegalTransition,
    RetryPolicy,
    SendBudget,
    Spool,
    State,
    Uploader,
    UploadTarget,
)
from fwfs.uploads import journal as journal_module
from fwfs.uploads.journal import check_transition, render_state_table

REPO = Path(__file__).resolve().parents[2]
SEMANTICS = REPO / "docs" / "SEMANTICS.md"
S = State


class Site:
    """The upload callable: keeps what it got; fails the first ``fail`` uploads."""

    def __init__(self, fail: float = 0, error: type[FwfsError] = RemoteUnavailable) -> None:
        self.got: list[bytes] = []
        self.fail, self.error = fail, error

    def __call__(
        self, target: UploadTarget, fileobj: BinaryIO, size: int, budget: SendBudget
    ) -> Json:
        data = fileobj.read(size)
        if self.fail > 0:
            self.fail -= 1
            raise self.error("refused")
        self.got.append(data)
        return {"name": target.name, "size": size}


def target(name: str = "a.bin") -> UploadTarget:
    return UploadTarget("acquisition", "cid1", name, f"p/{name}")


def uploader(spool: Spool, site: Site, attempts: int = 1) -> Uploader:
    return Uploader(spool, site, retry=RetryPolicy(attempts=attempts), sleep=lambda s: None)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


# ---- the table --------------------------------------------------------------------------


@pytest.mark.parametrize("old", [None, *State], ids=lambda s: "new" if s is None else s.value)
def test_every_pair_of_states_is_allowed_or_refused_as_the_table_says(old: State | None) -> None:
    for new in State:
        allowed = new in (S.COPYING, S.STAGED) if old is None else new in ALLOWED[old]
        if allowed or (old is not None and old == new and old != S.DONE):
            check_transition(old, new)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(old, new)


def test_done_and_failed_are_the_only_ends() -> None:
    assert ALLOWED[S.DONE] == frozenset()
    assert ALLOWED[S.FAILED] == {S.DONE}  # uploaded on request, or dismissed by a person
    # Every state can end: DONE is reachable from each.
    reach = {s for s in State if S.DONE in ALLOWED[s]} | {S.DONE}
    assert reach == set(State)


def test_semantics_shows_the_state_table() -> None:
    text = SEMANTICS.read_text()
    start = text.index("<!-- upload-states-table -->\n") + len("<!-- upload-states-table -->\n")
    end = text.index("<!-- /upload-states-table -->")
    assert text[start:end] == render_state_table()


def test_an_illegal_transition_raises_and_changes_nothing(spool: Spool) -> None:
    staged = spool.create(target())
    staged.write(0, b"abc")
    uploader(spool, Site()).release(staged)
    assert staged.finished
    with pytest.raises(IllegalTransition):
        staged._set_state(S.UPLOADING)  # a finished file never uploads again
    assert staged.finished and not spool.journal_path(staged.entry).exists()


# ---- the code takes every transition of the table, and only those ------------------------


def test_the_write_path_and_recovery_take_every_transition(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: set[tuple[State | None, State]] = set()
    real = journal_module.check_transition

    def spy(old: State | None, new: State) -> None:
        real(old, new)
        if old != new:
            taken.add((old, new))

    for module in ("fwfs.uploads.spool", "fwfs.uploads.recovery"):
        monkeypatch.setattr(f"{module}.check_transition", spy)
    ok, failing = Site(), Site(fail=math.inf, error=PermissionDenied)
    up, down = uploader(spool, ok), uploader(spool, failing)

    # copying -> clean -> staged -> sending -> uploading -> clean -> discarded -> done
    a = spool.create(target(), truncate_from=io.BytesIO(b"old"))
    a.write(0, b"new")
    up.commit(a)
    a.discard()
    up.release(a)
    # staged -> synced -> staged; synced -> uploading -> synced (a failed commit, writer
    # open) -> failed (its last close); and synced -> discarded
    b = spool.create(target("b"))
    b.fsync()
    b.write(0, b"b")
    b.fsync()
    with pytest.raises(PermissionDenied):
        down.commit(b)
    with pytest.raises(PermissionDenied):
        down.release(b)
    c = spool.create(target("c"))
    c.fsync()
    c.discard()
    up.release(c)
    # staged -> discarded; staged -> failed (a write failed: never uploaded); clean -> done
    d = spool.create(target("d"))
    d.discard()
    up.release(d)
    e = spool.create(target("e"))
    e.mark_failed(FwfsError("disk full"))
    with pytest.raises(FwfsError):
        up.release(e)
    f = spool.create(target("f"), truncate_from=io.BytesIO(b"unchanged"))
    up.release(f)
    # uploading -> done; uploading -> failed; clean -> staged
    g = spool.create(target("g"))
    g.fsync()
    up.release(g)
    h = spool.create(target("h"))
    h.fsync()
    with pytest.raises(PermissionDenied):
        down.release(h)
    i = spool.create(target("i"))
    i.fsync()
    i.open()
    up.commit(i)
    i.write(0, b"again")
    up.release(i)
    up.release(i)
    # staged -> done and synced -> done: unlinked once no writer is left
    for name, sync in (("j", False), ("k", True)):
        j = spool.create(target(name))
        if sync:
            j.fsync()
        j.close_writer()
        j.discard()

    # sending, when the bytes cannot be made durable: -> clean, -> synced, -> failed, -> done
    def no_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(spool.records, "make_durable", no_fsync)
    m = spool.create(target("m"))
    m.open()
    up.commit(m)  # sending -> clean
    m.write(0, b"m")
    with pytest.raises(PermissionDenied):
        down.commit(m)  # sending -> synced
    up.release(m)
    with pytest.raises(PermissionDenied):
        up.release(m)  # the failed commit's bytes are kept
    n = spool.create(target("n"))
    up.release(n)  # sending -> done
    o = spool.create(target("o"))
    with pytest.raises(PermissionDenied):
        down.release(o)  # sending -> failed
    monkeypatch.undo()
    for module in ("fwfs.uploads.spool", "fwfs.uploads.recovery"):
        monkeypatch.setattr(f"{module}.check_transition", spy)

    # A copy that fails: copying -> done.
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: object) -> int:
            raise RemoteUnavailable("connection reset")

    with pytest.raises(RemoteUnavailable):
        spool.create(target("p"), truncate_from=Broken())  # type: ignore[arg-type]

    # The next mount: a "sending" entry goes to recovery/ (sending -> failed), and a
    # recovery/ entry retried on request is uploaded (failed -> done).
    record = {"id": "e" * 32, "state": "sending", "target": target("q").to_json()}
    spool.records.write("e" * 32, record)
    spool.data_path("e" * 32).write_bytes(b"q")
    retried = uploader(spool, Site())
    outcomes = {r.outcome for r in retried.recover(retry_recovery=True)}
    assert outcomes == {"incomplete", "uploaded"}

    every: set[tuple[State | None, State]] = {(None, s) for s in (S.COPYING, S.STAGED)}
    every |= {(old, new) for old, targets in ALLOWED.items() for new in targets}
    assert taken == every, sorted(every - taken, key=str)


# ---- kills --------------------------------------------------------------------------------

# A daemon-like process: drives one staged file into a state, then dies with SIGKILL.
KILL_IN_STATE = textwrap.dedent(
    """
    import io, os, signal, sys
    from pathlib import Path
    from fwfs.errors import PermissionDenied
    from fwfs.uploads import RetryPolicy, Spool, Uploader, UploadTarget

    root, state = Path(sys.argv[1]), sys.argv[2]
    data = b"the bytes of " + state.encode()
    spool = Spool(root)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    def site(target, fileobj, size, budget):
        fileobj.read(size)
        if state == "failed":
            raise PermissionDenied("HTTP 403")
        if state in ("sending", "uploading"):
            die()
        return {"name": target.name}
    up = Uploader(spool, site, retry=RetryPolicy(attempts=1))
    class Copy(io.RawIOBase):
        def readable(self): return True
        def readinto(self, b):
            die()
    t = UploadTarget("acquisition", "cid1", state, "p/" + state)
    if state == "copying":
        spool.create(t, truncate_from=Copy())
    staged = spool.create(t)
    staged.write(0, data)
    if state in ("synced", "uploading"):
        staged.fsync()
    if state == "sending":
        spool.records.make_durable = lambda fd: die()  # the fsync never ends
    if state in ("sending", "uploading", "failed"):
        try:
            up.release(staged)
        except PermissionDenied:
            pass
    if state == "clean":
        staged.open()
        up.commit(staged)
    if state == "discarded":
        staged.discard()
    die()
    """
)
# What the next mount does with an entry left in each state (docs/SEMANTICS.md).
AFTER_KILL = {
    "copying": None,  # dropped: the program never got the file
    "staged": "incomplete",
    "synced": "uploaded",
    "sending": "incomplete",
    "uploading": "uploaded",
    "clean": None,  # dropped: the site has these bytes
    "discarded": None,
    "failed": "kept",
}


@pytest.mark.parametrize("state", list(AFTER_KILL))
def test_a_daemon_killed_in_each_state_is_finished_as_the_table_says(
    tmp_path: Path, state: str
) -> None:
    root = tmp_path / "spool"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_STATE, str(root), state],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    data = b"the bytes of " + state.encode()
    site = Site()
    with Spool(root) as spool:
        left = [p.state for p in uploader(spool, site).pending()]
        reports = uploader(spool, site).recover()
        outcome = AFTER_KILL[state]
        if outcome is None:
            assert left == [] and reports == []
        else:
            assert left == [state]
            [report] = reports
            assert report.outcome == outcome
            if outcome == "uploaded":
                assert site.got == [data]
            else:
                assert site.got == []
                assert report.data_path is not None and report.data_path.read_bytes() == data
        assert list(spool.staging.iterdir()) == [] and list(spool.journal.iterdir()) == []


# A commit killed after its k-th step on disk (every step ends with a directory fsync),
# counted from the program's fsync: the bytes were complete and durable.
KILL_AT_STEP = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from fwfs.errors import PermissionDenied
    from fwfs.uploads import RetryPolicy, Spool, Uploader, UploadTarget, journal

    root, kill_at, fail = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "fail"
    real, steps, counting = journal.fsync_dir, [0], [False]
    def counted(path):
        real(path)
        steps[0] += counting[0]
        if counting[0] and steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    journal.fsync_dir = counted
    def site(target, fileobj, size, budget):
        data = fileobj.read(size)
        if fail:
            raise PermissionDenied("HTTP 403")
        (root.parent / "site.bin").write_bytes(data)
        return {"name": target.name}
    spool = Spool(root)
    staged = spool.create(UploadTarget("acquisition", "cid1", "f.bin", "p/f.bin"))
    staged.write(0, b"precious " * 1000)
    staged.fsync()  # the program's completion point: from here on, nothing may be lost
    counting[0] = True
    try:
        Uploader(spool, site, retry=RetryPolicy(attempts=1)).release(staged)
    except PermissionDenied:
        pass
    print(steps[0])
    """
)


@pytest.mark.parametrize("fail", [False, True], ids=["upload succeeds", "upload fails"])
def test_a_commit_killed_after_any_step_on_disk_loses_no_byte(tmp_path: Path, fail: bool) -> None:
    data = b"precious " * 1000

    def run(root: Path, kill_at: int) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-c", KILL_AT_STEP, str(root), str(kill_at)]
        return subprocess.run(
            [*argv, "fail" if fail else "ok"], cwd=REPO, capture_output=True, timeout=60
        )

    whole = run(tmp_path / "whole" / "spool", 0)
    assert whole.returncode == 0, whole.stderr.decode()
    steps = int(whole.stdout)
    assert steps >= 3
    for k in range(1, steps + 1):
        root = tmp_path / f"kill-{k}" / "spool"
        proc = run(root, k)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        uploaded_before = root.parent / "site.bin"
        site = Site()
        with Spool(root) as spool:
            reports = uploader(spool, site).recover()
            kept = [p.read_bytes() for p in spool.recovery.glob("*.data")]
            assert list(spool.staging.iterdir()) == [] and list(spool.journal.iterdir()) == []
        arrived = site.got + ([uploaded_before.read_bytes()] if uploaded_before.exists() else [])
        # Uploaded (perhaps twice: at least once beats at most once) or kept, exactly.
        assert data in arrived or kept == [data], (k, reports)
        assert all(got == data for got in arrived) and all(b == data for b in kept), k
        if fail:
            assert not arrived or not kept, k  # told it failed: kept, or sent by recovery
