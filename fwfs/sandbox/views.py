"""Wire JSON of the sandbox: containers, files and resolver nodes as the Flywheel SDK reads them.

Field names follow the SDK's models (flywheel/models/*_output.py); every container carries
`container_type`, without which `fw.get()` silently returns a group and `fw.resolve()` fails.
"""

from __future__ import annotations

from typing import Any

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
    def __init__(self, store: Store) -> None:
        self.store = store

    def permissions(self) -> list[dict[str, Any]]:
        return [
            {
                "_id": u.id,
                "access": "rw" if u.can_write else "ro",
                "role_ids": ["admin" if u.can_write else "read-only"],
            }
            for u in self.store.users()
        ]

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
        return out

    def files(self, c: Container, file_group: str = "files") -> list[dict[str, Any]]:
        return [self.file(r, c) for r in self.store.current_files(c.id, file_group)]

    def container(self, c: Container, with_files: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = dict(c.doc)
        out["_id"] = c.id
        out["label"] = c.label
        out["container_type"] = c.type
        out["info_exists"] = bool(out.get("info"))
        parents = out.get("parents", {})
        if c.type == "group":
            out["permissions"] = self.permissions()
            return out
        out["permissions"] = self.permissions()
        if c.type in ("project", "session"):
            out["group"] = parents.get("group")
        if c.type in ("subject", "session"):
            out["project"] = parents.get("project")
        if c.type == "project":
            group = self.store.get_container(parents.get("group", ""))
            out["group_info"] = {
                "_id": parents.get("group"),
                "label": group.label if group else None,
            }
        if c.type == "subject":
            out.setdefault("code", c.label)
        if c.type == "session":
            subj = self.store.get_container(parents.get("subject", ""))
            if subj is not None:
                out["subject"] = self.container(subj, with_files=False)
        if c.type == "acquisition":
            out["session"] = parents.get("session")
        if c.type == "analysis":
            parent = self.store.get_container(c.parent_id or "")
            if parent is not None:
                out["parent"] = {"type": parent.type, "id": parent.id}
            out["inputs"] = self.files(c, "inputs")
        if with_files:
            out["files"] = self.files(c)
            if c.type != "analysis":
                out["analyses"] = [
                    self.container(a, with_files=False)
                    for a in self.store.children(c.id, "analysis")
                ]
        return out

    def children_nodes(self, c: Container | None) -> list[dict[str, Any]]:
        """What `/resolve` lists below a node: child containers, analyses, then files."""
        if c is None:
            return [self.container(g) for g in self.store.children(None, "group")]
        nodes: list[dict[str, Any]] = []
        child = CHILD_TYPE.get(c.type)
        if child is not None:
            nodes += [self.container(x) for x in self.store.children(c.id, child)]
        if c.type not in ("group", "analysis"):
            nodes += [self.container(x) for x in self.store.children(c.id, "analysis")]
        if c.type != "group":
            nodes += [self.file(r, c, node=True) for r in self.store.current_files(c.id, "files")]
        if c.type == "analysis":
            nodes += [self.file(r, c, node=True) for r in self.store.current_files(c.id, "inputs")]
        return nodes
