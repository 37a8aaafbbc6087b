"""Wire JSON of the sandbox: containers, files and resolver nodes as the Flywheel SDK reads them.

Field names follow the SDK's models (flywheel/models/*_output.py); every container carries
`container_type`, without which `fw.get()` silently returns a group and `fw.resolve()` fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fwfs.sandbox.access import Access
from fwfs.sandbox.store import Container, FileRec, Store

PLURAL = {
    "group": "groups",
    "project": "projects",
    "subject": "subjects",
    "session": "sessions",
    "acquisition": "acquisitions",
    "analysis": "analyses",
}
SINGULAR = {v: k for k, v in PLURAL.items()}
# The children a container lists, in the order the hierarchy goes.
CHILD_TYPE = {
    "group": "project",
    "project": "subject",
    "subject": "session",
    "session": "acquisition",
}
PARENT_TYPE = {v: k for k, v in CHILD_TYPE.items()}


class Views:
    def __init__(self, store: Store, old_core: bool = False) -> None:
        self.store = store
        self.access = Access(store)
        # CORE19 (audit D11): files have neither `file_id` nor `version`.
        self.old_core = old_core

    def file(self, rec: FileRec, parent: Container, node: bool = False) -> dict[str, Any]:
        parents = dict(parent.doc.get("parents", {}))
        parents[parent.type] = parent.id
        out: dict[str, Any] = {
            "tags": [],
            "info": {},
            "classification": {},
            "modality": None,
            "type": None,
            **rec.doc,
            "_id": rec.file_id,
            "file_id": rec.file_id,
            "name": rec.name,
            "version": rec.version,
            "size": rec.size,
            "parent_ref": {"type": parent.type, "id": parent.id},
            "parents": parents,
            "file_group": rec.file_group,
        }
        out["info_exists"] = bool(out.get("info"))
        out.setdefault("replaced", None)
        out.setdefault("deleted", None)
        if node:
            out["container_type"] = "file"
        if self.old_core:
            del out["file_id"], out["version"]
        return out

    def files(self, c: Container, file_group: str = "files") -> list[dict[str, Any]]:
        return [self.file(r, c) for r in self.store.current_files(c.id, file_group)]

    def container(self, c: Container, with_files: bool = True) -> dict[str, Any]:
        return self.containers([c], with_files)[0]

    def containers(self, cs: Sequence[Container], with_files: bool = True) -> list[dict[str, Any]]:
        """The wire JSON of many containers, with what each one embeds (files, analyses,
        parents' labels) read for all of them at once: a listing of N children costs a
        handful of queries, not several per child."""
        perms = self.access.permissions_of()
        analyses: dict[str, list[Container]] = {}
        if with_files:
            analyses = self.store.children_of(
                (c.id for c in cs if c.type != "analysis"), "analysis"
            )
        # Embedded analyses are shown too (without files), so their references count.
        shown = [*cs, *(a for c in cs for a in analyses.get(c.id, ()))]
        known = {c.id: c for c in shown}
        wanted: set[str] = set()
        for c in shown:
            parents = c.doc.get("parents", {})
            if c.type == "project":
                wanted.add(parents.get("group", ""))
            elif c.type == "session":
                wanted.add(parents.get("subject", ""))
            elif c.type == "analysis":
                wanted.add(c.parent_id or "")
        related = self.store.containers_by_id(wanted - known.keys())
        related.update((k, known[k]) for k in wanted & known.keys())
        files: dict[str, list[FileRec]] = {}
        if with_files:
            files = self.store.current_files_of((c.id for c in cs), "files")
        inputs = self.store.current_files_of(
            (c.id for c in shown if c.type == "analysis"), "inputs"
        )

        def one(c: Container, with_files: bool) -> dict[str, Any]:
            out: dict[str, Any] = dict(c.doc)
            out["_id"] = c.id
            out["label"] = c.label
            out["container_type"] = c.type
            out["info_exists"] = bool(out.get("info"))
            out["permissions"] = perms(c)
            if c.type == "group":
                return out
            parents = out.get("parents", {})
            if c.type in ("project", "session"):
                out["group"] = parents.get("group")
            if c.type in ("subject", "session"):
                out["project"] = parents.get("project")
            if c.type == "project":
                group = related.get(parents.get("group", ""))
                out["group_info"] = {
                    "_id": parents.get("group"),
                    "label": group.label if group else None,
                }
            if c.type == "subject":
                out.setdefault("code", c.label)
            if c.type == "session":
                subj = related.get(parents.get("subject", ""))
                if subj is not None:
                    out["subject"] = one(subj, False)
            if c.type == "acquisition":
                out["session"] = parents.get("session")
            if c.type == "analysis":
                parent = related.get(c.parent_id or "")
                if parent is not None:
                    out["parent"] = {"type": parent.type, "id": parent.id}
                out["inputs"] = [self.file(r, c) for r in inputs.get(c.id, [])]
            if with_files:
                out["files"] = [self.file(r, c) for r in files.get(c.id, [])]
                if c.type != "analysis":
                    out["analyses"] = [one(a, False) for a in analyses.get(c.id, [])]
            return out

        return [one(c, with_files) for c in cs]

    def children_nodes(
        self,
        c: Container | None,
        subjects: bool = True,
        keep: Callable[[Container], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """What `/resolve` lists below a node: child containers, analyses, then files.

        Without `subjects` a project's children are its sessions (a core that gates the
        subject level, CORE19 resolver.py:179-180); `keep` leaves out containers the user
        may not read."""
        kids: list[Container] = []
        if c is None:
            kids = self.store.children(None, "group")
        else:
            child = CHILD_TYPE.get(c.type)
            if child == "subject" and not subjects:
                kids += self.store.descendants_of_type(c.id, "session")
            elif child is not None:
                kids += self.store.children(c.id, child)
            if c.type not in ("group", "analysis"):
                kids += self.store.children(c.id, "analysis")
        if keep is not None:
            kids = [k for k in kids if keep(k)]
        nodes = self.containers(kids)
        if c is None:
            return nodes
        if c.type != "group":
            nodes += [self.file(r, c, node=True) for r in self.store.current_files(c.id, "files")]
        if c.type == "analysis":
            nodes += [self.file(r, c, node=True) for r in self.store.current_files(c.id, "inputs")]
        return nodes
