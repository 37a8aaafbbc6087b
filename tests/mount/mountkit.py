"""The machinery of the mount tests: FUSE mounts as subprocesses (the mount runner of
fwfs/testing/mounts.py, re-exported here, with a test's failures and checks), the access
log, and the SDK's view of a site. Imported by tests/mount/conftest.py and the test modules
(tests/mount is on sys.path, as for every test directory without __init__.py).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import subprocess
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

from fwfs.testing import mounts
from fwfs.testing.mounts import Mount, fusermount, is_mounted, mounted_paths
from fwfs.testing.mounts import run_fwfs as fwfs
from fwfs.testing.sites import wait_until

# Re-exported for the test modules, which import them from here.
__all__ = ["Mount", "fusermount", "fwfs", "is_mounted", "mounted_paths"]

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
ROOT = os.getuid() == 0

# Paths on a mount of the demo site (tests/conftest.py's `demo_site`).
DEMO_PROJECT = "flywheel/Anxiety Study"
DEMO_SES = f"{DEMO_PROJECT}/sub-01/ses-baseline"

# Paths on a mount of a `Scratch` site (below).
PROJECT = "g/P"
SUB = "g/P/sub-01"
SES = "g/P/sub-01/ses-01"
ACQ = "g/P/sub-01/ses-01/anat"


def root_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (both conftests are module `conftest`)."""
    for plugin in config.pluginmanager.get_plugins():
        file = getattr(plugin, "__file__", None)
        if file and Path(file).resolve() == ROOT_CONFTEST:
            assert isinstance(plugin, ModuleType)
            return plugin
    raise RuntimeError("tests/conftest.py is not loaded")


# ---- mounts: the mount runner (fwfs/testing/mounts.py) with the test's failure and checks ----

# Every daemon a test has started and not yet stopped: what the watchdog kills.
LIVE: list[Mount] = []


def start_mount(site: Any, workdir: Path, **options: Any) -> Mount:
    """`fwfs.testing.mounts.start_mount` (`key`, `ttl`, `negative_ttl`, `cache_size`,
    `args`, `read_only`, `timeout`): a writable mount with its own spool, in LIVE.
    Fails the test with fwfs's output if it exits or never mounts."""
    try:
        mount = mounts.start_mount(site, workdir, live=LIVE, **options)
    except mounts.MountError as e:
        pytest.fail(str(e), pytrace=False)
    assert os.path.ismount(mount.path)
    return mount


def stop_mount(mount: Mount) -> None:
    problems = mount.unmount()
    if mount in LIVE:
        LIVE.remove(mount)
    if problems:
        print(f"{mount!r}: " + "; ".join(problems))
        print(mount.log()[-4000:])
    assert not is_mounted(mount.path), f"{mount.path} is still mounted after teardown"
    assert mount.proc.poll() is not None, "the fwfs daemon is still running after teardown"


# ---- what the site holds, according to the SDK --------------------------------------------


def _escape(label: str) -> str:
    if label in (".", ".."):
        return label.replace(".", "．")
    if not label:
        return "(no label)"
    return label.replace("/", "／").replace("\x00", "␀")


def _file_name_with_suffix(name: str) -> str:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    first_dot = name.find(".", 1)
    stem, ext = (name, "") if first_dot < 0 else (name[:first_dot], name[first_dot:])
    return f"{_escape(stem)} (file-{digest}){ext}"


def entry_names(containers: list[Any], files: list[str], reserved: bool) -> dict[str, Any]:
    """Names of one directory by the first collision step of docs/SEMANTICS.md (enough for
    the demo tree): of a group of equal names, the entry the site's path of that name reaches
    keeps it (a container labelled exactly so, the oldest by id; else such a file), and
    every other member gets its suffix. A reserved name (`analyses`) nobody keeps."""
    plain = [_escape(c.label) for c in containers] + [_escape(f) for f in files]
    taken = Counter(plain + (["analyses"] if reserved else []))
    keeps: dict[str, Any] = {}
    for c in sorted(containers, key=lambda c: c.id, reverse=True):
        keeps[c.label] = c
    for f in files:
        keeps.setdefault(f, f)
    if reserved:
        keeps.pop("analyses", None)
    out: dict[str, Any] = {}
    for c, name in zip(containers, plain, strict=False):
        out[name if taken[name] == 1 or keeps.get(name) is c else f"{name} ({c.id[-8:]})"] = c
    for f in files:
        name = _escape(f)
        out[name if taken[name] == 1 or keeps.get(name) == f else _file_name_with_suffix(f)] = f
    assert len(out) == len(containers) + len(files), "the demo needs a further collision step"
    return out


def analysis_input(fw: Any, analysis_id: str, name: str) -> bytes:
    """An analysis input's bytes from `GET /analyses/{id}/inputs/{name}`, through the SDK's
    own API client (it has no method for that route). The files route serves outputs only
    on a real core (`--analysis-io-split`), and an output of the same name wins anyway."""
    resp = fw.api_client.call_api(
        "/analyses/{analysis_id}/inputs/{file_name}",
        "GET",
        {"analysis_id": analysis_id, "file_name": name},
        [],
        {},
        auth_settings=["ApiKey"],
        _return_http_data_only=True,
        _preload_content=False,
    )
    data: bytes = resp.content
    return data


def sdk_container(fw: Any, path: str) -> Any:
    """The container at `group/project/subject/session/acquisition` (labels; a prefix is
    fine), found with the SDK's finders. Not `fw.lookup`: the SDK sends no
    `subject-container`, so a core that gates subjects resolves such a path differently."""
    group, *labels = path.split("/")
    node = fw.get_group(group)
    finders = ("projects", "subjects", "sessions", "acquisitions")
    for finder, label in zip(finders, labels, strict=False):
        matches = [c for c in getattr(node, finder)() if c.label == label]
        assert len(matches) == 1, (path, label, matches)
        node = matches[0]
    return node.reload()


class SiteTree:
    """The files and directories a mount of the site should show under some paths, built
    from the SDK: `files[relpath] -> bytes` (downloaded by the SDK), `dirs` (relpaths)."""

    def __init__(self, fw: Any) -> None:
        self.fw = fw
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set()

    def add_group(self, gid: str) -> None:
        self.dirs.add(gid)
        for project in self.fw.get_group(gid).projects():
            self.add_container(f"{gid}/{_escape(project.label)}", project)

    def add_container(self, path: str, container: Any) -> None:
        fw = self.fw
        container = container.reload()
        self.dirs.add(path)
        kind = container.container_type
        listers: dict[str, Callable[[], list[Any]]] = {
            "project": lambda: list(container.subjects()),
            "subject": lambda: list(container.sessions()),
            "session": lambda: list(container.acquisitions()),
            "acquisition": lambda: [],
        }
        children = listers[kind]()
        files = [f.name for f in container.files]
        named = entry_names(children, files, reserved=True)
        for name, item in named.items():
            if isinstance(item, str):
                data = fw.download_file_from_container_as_data(container.id, item)
                self.files[f"{path}/{name}"] = data
            else:
                self.add_container(f"{path}/{name}", item)
        analyses = list(container.analyses or [])
        if analyses:
            self.dirs.add(f"{path}/analyses")
            for name, analysis in entry_names(analyses, [], reserved=False).items():
                self.add_analysis(f"{path}/analyses/{name}", fw.get_analysis(analysis.id))

    def add_analysis(self, path: str, analysis: Any) -> None:
        self.dirs.update({path, f"{path}/input", f"{path}/output"})
        for name in entry_names([], [f.name for f in analysis.files or []], reserved=False):
            data = self.fw.download_file_from_analysis_as_data(analysis.id, name)
            self.files[f"{path}/output/{name}"] = data
        for name in entry_names([], [f.name for f in analysis.inputs or []], reserved=False):
            self.files[f"{path}/input/{name}"] = analysis_input(self.fw, analysis.id, name)

    def under(self, prefix: str) -> SiteTree:
        sub = SiteTree(self.fw)
        sub.files = {
            k.removeprefix(prefix + "/"): v for k, v in self.files.items() if k.startswith(prefix)
        }
        sub.dirs = {k.removeprefix(prefix + "/") for k in self.dirs if k.startswith(prefix + "/")}
        return sub


# ---- the access log -------------------------------------------------------------------------


def requests_since(site: Any, mark: int, settle: float = 0.1) -> list[dict[str, Any]]:
    # The access log is JSON-shaped; the site fixture is untyped here.
    return cast(list[dict[str, Any]], site.requests_since(mark, settle))


def quiet_mark(site: Any) -> int:
    return cast(int, site.quiet_mark())


# ---- errnos and faults ----------------------------------------------------------------------


def errno_of(call: Callable[[], Any]) -> int:
    """The errno of the OSError `call()` raises (the test fails if it raises none)."""
    with pytest.raises(OSError) as info:
        call()
    code = info.value.errno
    assert code is not None
    return code


def denied_by_mode(expected: int) -> int:
    """The errno for writing into a `dr-x` directory or a `-r--` file: the daemon's
    `expected` when root (the kernel lets root past mode bits), the kernel's EACCES for
    anyone else (`default_permissions`)."""
    return expected if ROOT else errno.EACCES


# ---- writes: what reached the site ----------------------------------------------------------

_UPLOAD = re.compile(r"/api/(projects|subjects|sessions|acquisitions|analyses)/[^/]+/files")
_MOVE = re.compile(r"/api/files/[^/]+/move")


def uploads(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The upload requests (`POST /api/<kind>/<id>/files`, whatever their status) among
    access-log entries."""
    return [e for e in entries if e["method"] == "POST" and _UPLOAD.fullmatch(e["path"])]


def moves(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "POST" and _MOVE.fullmatch(e["path"])]


def changes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every request that could change the site (anything but GET, HEAD and the read-only
    POSTs /api/resolve and /api/lookup)."""
    reads = ("/api/resolve", "/api/lookup")
    return [
        e
        for e in entries
        if e["method"] not in ("GET", "HEAD") and not (e["method"] == "POST" and e["path"] in reads)
    ]


def big_path(mount: Mount) -> Path:
    """`big.bin` of a `big_site` mount (tests/mount/conftest.py)."""
    matches = list((mount / DEMO_SES).glob("T1w/big.bin"))
    assert len(matches) == 1, matches
    return matches[0]


def site_files(fw: Any, cid: str) -> dict[str, Any]:
    """The current files of a container as the SDK sees them, by name."""
    return {f.name: f for f in fw.get(cid).files}


def site_bytes(fw: Any, cid: str, name: str) -> bytes:
    data = fw.download_file_from_container_as_data(cid, name)
    assert isinstance(data, bytes)
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sh(*argv: str | Path) -> str:
    """A command's stdout; it must succeed (its stderr is the failure's message)."""
    out = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_for(
    predicate: Any, timeout: float = 30.0, what: str = "the condition", step: float = 0.05
) -> float:
    """Poll `predicate()` every `step` seconds until true; fail after `timeout`. Returns the
    seconds it took."""
    try:
        return wait_until(predicate, timeout, what, step)
    except TimeoutError as e:
        pytest.fail(str(e))


def spool_journal(spool: Path) -> list[dict[str, Any]]:
    """The journal entries of a spool directory (fwfs/uploads/spool.py's layout)."""
    out = []
    for path in sorted((spool / "journal").glob("*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # replaced while being read
    return out


def recovery_entries(spool: Path) -> list[tuple[dict[str, Any], bytes]]:
    """(journal, bytes) of every entry of `spool/recovery/`."""
    out = []
    for data in sorted((spool / "recovery").glob("*.data")):
        record = json.loads(data.with_suffix(".json").read_text(encoding="utf-8"))
        out.append((record, data.read_bytes()))
    return out


def empty_project(site: Any, group_label: str) -> tuple[Any, Any, Any]:
    """Group `g` (labelled `group_label`) with an empty project `P` on `site`:
    (site, sdk, project)."""
    import flywheel  # after tests/conftest.py has set the SDK's retry environment

    fw = site.client()
    fw.add_group(flywheel.Group("g", group_label))
    return site, fw, fw.get_group("g").add_project(label="P")


class Scratch:
    """A private site with one of each thing a write can meet (paths on a mount):

    g/P                                   project, file notes.txt ("version one\n")
    g/P/sub-01/ses-01                     session, analysis "qc" (output report.txt)
    g/P/sub-01/ses-01/anat                acquisition, file scan.zip (member dir/a.txt)
    """

    NOTES = b"version one\n"
    MEMBER = b"a zip member\n"
    REPORT = b"an analysis output\n"

    def __init__(self, site: Any, fw: Any = None, group: str = "g") -> None:
        import flywheel  # after tests/conftest.py has set the SDK's retry environment

        self.site = site
        self.fw = fw = fw if fw is not None else site.client()
        fw.add_group(flywheel.Group(group, "Scratch"))
        self.project = fw.get_group(group).add_project(label="P")
        self.project.upload_file(flywheel.FileSpec("notes.txt", self.NOTES))
        self.subject = self.project.add_subject(label="sub-01")
        self.session = self.subject.add_session(label="ses-01")
        self.acquisition = self.session.add_acquisition(label="anat")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("dir/a.txt", self.MEMBER)
        self.acquisition.upload_file(flywheel.FileSpec("scan.zip", archive.getvalue()))
        self.analysis = self.session.add_analysis(label="qc")
        self.analysis.upload_output(flywheel.FileSpec("report.txt", self.REPORT))

    def files(self, container: Any) -> dict[str, Any]:
        """The container's current files (SDK), by name."""
        return {f.name: f for f in self.fw.get(container.id).files}

    def read(self, container: Any, name: str) -> bytes:
        data = self.fw.download_file_from_container_as_data(container.id, name)
        assert isinstance(data, bytes)
        return data
