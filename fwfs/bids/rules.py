"""The official BIDS exporter's placement rules, over metadata only: no I/O.

`build` takes a project, its sessions and its acquisitions as the site lists them (their
files embedded, with `info`) and says which file goes where in a BIDS dataset, what is
synthesized (JSON sidecars, an old-way `dataset_description.json`) and what is wrong (the
error file). The rules are flywheel-bids 1.2.34's `export_bids.py` (docs/SANDBOX.md, "What
the exporter does", cites each one by line), with the differences docs/SEMANTICS.md's
"BIDS view" lists: two files claiming one path are both left out (the exporter fails or
keeps the later one), and a func sidecar gets `TaskName` from `Task` when it lacks one.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fwfs.models import Container, FileInfo, parse_file
from fwfs.paths import NAME_MAX

NAMESPACE = "BIDS"
# The report of what the view left out or flags, at the view's root. Hidden, so BIDS tools
# (bids-validator, pybids) skip it.
ERRORS_NAME = ".fwfs-errors.txt"
DESCRIPTION = "dataset_description.json"
# The first key of a dataset description: in the project's `info.BIDS` only when curated
# the old way (FB utils/curation_tools.py:49).
_OLD_WAY_KEY = "Acknowledgements"

Level = Literal["project", "session", "acquisition"]


@dataclass(frozen=True)
class Entry:
    """One file of the view: a site file's bytes (`source`), or bytes made here (`data`)."""

    path: str
    mtime: float
    source: FileInfo | None = None
    data: bytes | None = None

    @property
    def size(self) -> int:
        if self.source is not None:
            return self.source.size
        return len(self.data or b"")


@dataclass(frozen=True)
class BidsTree:
    """The view: files by path, directories by path ("" the root) with their entry names,
    and the report's lines (also the bytes of its `ERRORS_NAME` file)."""

    files: dict[str, Entry]
    dirs: dict[str, tuple[str, ...]]
    errors: tuple[str, ...]


@dataclass
class _Claim:
    level: Level
    container: Container | None
    file: FileInfo | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    data: bytes | None = None
    mtime: float = 0.0
    # Where the container is, for a person reading the report: its session's, subject's.
    within: str = ""

    def entry(self, path: str) -> Entry:
        if self.file is not None:
            return Entry(path, self.file.modified, source=self.file)
        return Entry(path, self.mtime, data=self.data)

    def describe(self) -> str:
        if self.file is None:
            return "made from the project's info.BIDS"
        c = self.container
        where = f'{c.kind} "{c.label}" ({c.id})' if c is not None else "?"
        return f'{self.within}{where} file "{self.file.name}" ({self.file.file_id})'


def parse_bool(value: Any) -> bool:
    """FB export_bids.py:44-53: true, a non-zero int, or "true" in any case."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    return str(value).lower() == "true"


def metadata(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """FB `get_metadata`: `info.BIDS` when it is a curation (a non-empty dict), else None
    (absent, "NA", or anything else no rule can read)."""
    info = doc.get("info")
    value = info.get(NAMESPACE) if isinstance(info, Mapping) else None
    return value if isinstance(value, dict) and value else None


def container_ignored(c: Container) -> bool:
    """FB `is_container_excluded` (`:104-107`): any true value of `info.BIDS.ignore`."""
    meta = metadata(c.raw)
    return bool(meta.get("ignore", False)) if meta else False


def old_way(project: Container) -> bool:
    """FB `find_how_curated`: `Acknowledgements` in the project's `info.BIDS` means the
    dataset description (and every sidecar) is made from metadata."""
    meta = metadata(project.raw)
    return meta is not None and _OLD_WAY_KEY in meta


def place(f: FileInfo) -> str | None:
    """FB `define_path` (`:123-142`), normalized: `<Path>/<Filename>`; a name holding
    `.json` or `.tsv` at the root when `Filename` is empty; else nowhere. A path that would
    leave the dataset (`..`, absolute) is nowhere too."""
    meta = metadata(f.raw)
    if meta is None:
        return None
    filename = meta.get("Filename")
    if filename:
        path = posixpath.join(str(meta.get("Path") or ""), str(filename))
    elif ".json" in f.name or ".tsv" in f.name:
        path = f.name
    else:
        return None
    return clean(path)


def clean(path: str) -> str | None:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or path.startswith("/") or ".." in parts:
        return None
    if any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX or "\0" in p for p in parts):
        return None
    return "/".join(parts)


def excluded(f: FileInfo, path: str, sourcedata: bool) -> bool:
    """FB `is_file_excluded` (`:71-101`), less its checks of an existing download."""
    meta = metadata(f.raw)
    if meta is None or parse_bool(meta.get("ignore", False)):
        return True
    return not sourcedata and str(meta.get("Path") or "").startswith("sourcedata")


def sidecar_json(metadata: Mapping[str, Any]) -> bytes:
    """The exporter's serialization of a sidecar: `json.dump(…, sort_keys=True, indent=4)`,
    no trailing newline (FB `create_json_sidecar`, `:246-248`)."""
    return json.dumps(metadata, sort_keys=True, indent=4).encode()


def sidecar_content(f: FileInfo, path: str) -> dict[str, Any] | None:
    """A synthesized sidecar's content (FB `create_json_sidecar`, `:205-250`): the file's
    `info` minus `BIDS`, then `delete_info`, then `set_info`; None when `info` holds
    nothing but `BIDS`. A func image's sidecar without `TaskName` takes `Task` (FB08
    `export_bids.py:148-153`; FB leaves it to curation's `sidecarChanges`)."""
    info = f.raw.get("info")
    if not isinstance(info, Mapping):
        return None
    content = {k: v for k, v in info.items() if k != NAMESPACE}
    if not content:
        return None
    meta = metadata(f.raw) or {}
    deletes = meta.get("delete_info")
    if isinstance(deletes, list):
        for key in deletes:
            if isinstance(key, str):
                content.pop(key, None)
    sets = meta.get("set_info")
    if isinstance(sets, Mapping):
        content.update(sets)
    task = meta.get("Task")
    if _folder(path) == "func" and "TaskName" not in content and isinstance(task, str) and task:
        content["TaskName"] = task
    return content


def sidecar_path(path: str) -> str | None:
    """FB `check_sidecar_exist` (`:152-202`): an acquisition's `.nii`/`.nii.gz` only."""
    for ext in (".nii.gz", ".nii"):
        if path.endswith(ext):
            return path[: -len(ext)] + ".json"
    return None


def _folder(path: str) -> str:
    return posixpath.basename(posixpath.dirname(path))


def _files(c: Container) -> list[FileInfo]:
    out = []
    for doc in c.raw.get("files") or []:
        if isinstance(doc, dict):
            try:
                out.append(parse_file(doc, c.ref))
            except ValueError:
                continue
    return out


def build(
    project: Container,
    sessions: Sequence[Container],
    acquisitions: Sequence[Container],
    *,
    sourcedata: bool = False,
) -> BidsTree:
    """The project's BIDS dataset by the exporter's rules. `acquisitions` may be the
    project's all at once: each goes with its session (`parents.session`), and is left out
    with an ignored session or one not in `sessions`."""
    errors: list[str] = []
    claims: dict[str, list[_Claim]] = {}
    old = old_way(project)

    def consider(level: Level, c: Container, files: Iterable[FileInfo], within: str = "") -> None:
        for f in files:
            path = place(f)
            if path is None:
                if metadata(f.raw) is not None and _unsafe(f):
                    errors.append(f"unsafe path: left out: {_Claim(level, c, f).describe()}")
                continue
            if excluded(f, path, sourcedata):
                continue
            claim = _Claim(level, c, f, metadata(f.raw) or {}, within=within)
            claims.setdefault(path, []).append(claim)

    consider("project", project, _files(project))
    shown_sessions = {s.id: s for s in sessions if not container_ignored(s)}
    for s in sessions:
        if s.id in shown_sessions:
            consider("session", s, _files(s), _subject_of(s))
    for a in acquisitions:
        ses = shown_sessions.get(a.parents.get("session", ""))
        if ses is not None and not container_ignored(a):
            within = f'{_subject_of(ses)}session "{ses.label}" ({ses.id}) '
            consider("acquisition", a, _files(a), within)

    if old:
        # The description is made from the project's metadata, replacing any attachment
        # (the exporter's stated intent, `:406-421`).
        claims.pop(DESCRIPTION, None)
        meta = metadata(project.raw) or {}
        made = _Claim("project", None, None, data=sidecar_json(meta), mtime=project.modified)
        claims[DESCRIPTION] = [made]
    elif DESCRIPTION not in claims:
        errors.append(
            f"missing: {DESCRIPTION}: no project file is curated to it and the project is "
            "curated the new way (info.BIDS.Sidecar), so none is made from metadata"
        )

    files: dict[str, _Claim] = {}
    contested: set[str] = set()
    for path, found in claims.items():
        if len(found) > 1:
            contested.add(path)
            names = "; ".join(c.describe() for c in found)
            errors.append(f"duplicate path: {path}: all left out, claimed by {names}")
        else:
            files[path] = found[0]
    # A file where another one needs a directory cannot be shown either.
    dir_paths = {posixpath.dirname(p) for p in [*files, *contested]}
    for path in list(files):
        if any(d == path or d.startswith(path + "/") for d in dir_paths):
            blocked = files.pop(path).describe()
            errors.append(f"file in the way of a directory: {path}: left out, {blocked}")

    _sidecars(files, contested, old)
    for path, claim in sorted(files.items()):
        if claim.file is not None and not _valid(claim.meta):
            message = " / ".join(str(claim.meta.get("error_message") or "").splitlines())
            errors.append(f"invalid: {path}: shown; {claim.describe()}: {message}")
    return _tree(project, files, errors)


def _subject_of(s: Container) -> str:
    subject = s.raw.get("subject")
    label = subject.get("label") or subject.get("code") if isinstance(subject, dict) else None
    return f'subject "{label}" ' if isinstance(label, str) and label else ""


def _unsafe(f: FileInfo) -> bool:
    meta = metadata(f.raw) or {}
    return bool(meta.get("Filename"))


def _valid(meta: Mapping[str, Any]) -> bool:
    """FB `warn_if_bids_invalid` (`:110-120`): only an explicit false is invalid."""
    value = meta.get("valid")
    return value is None or parse_bool(value)


def _sidecars(files: dict[str, _Claim], contested: set[str], old: bool) -> None:
    images = [
        (path, claim)
        for path, claim in files.items()
        if claim.level == "acquisition" and claim.file is not None and sidecar_path(path)
    ]
    for path, claim in images:
        side = sidecar_path(path)
        assert side is not None and claim.file is not None
        real = files.get(side)
        if old and real is not None and real.level == "acquisition":
            # Old way: real sidecars give way to metadata (`:175-183`).
            del files[side]
            real = None
        if real is not None or side in contested:
            continue
        content = sidecar_content(claim.file, path)
        if content is not None:
            files[side] = _Claim(
                "acquisition",
                claim.container,
                None,
                data=sidecar_json(content),
                mtime=claim.file.modified,
            )


def _tree(project: Container, claims: dict[str, _Claim], errors: list[str]) -> BidsTree:
    files = {path: c.entry(path) for path, c in claims.items()}
    header = (
        f'# BIDS view of project "{project.label}" ({project.id}): files left out or '
        'flagged, one per line (docs/SEMANTICS.md, "BIDS view")\n'
    )
    report = (header + "".join(line + "\n" for line in errors)).encode()
    newest = max([project.modified, *(e.mtime for e in files.values())])
    files[ERRORS_NAME] = Entry(ERRORS_NAME, newest, data=report)
    children: dict[str, set[str]] = {"": set()}
    for path in files:
        parent, name = posixpath.split(path)
        children.setdefault(parent, set()).add(name)
        while parent:
            up, name = posixpath.split(parent)
            children.setdefault(up, set()).add(name)
            parent = up
    dirs = {d: tuple(sorted(names)) for d, names in children.items()}
    return BidsTree(files, dirs, tuple(errors))
