"""The sandbox's Flywheel API: auth, containers, resolve/lookup, finders, jobs.

File endpoints (download, Range, zip, tickets, uploads) live in `files.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fwfs import __version__
from fwfs.sandbox import filters
from fwfs.sandbox.access import PROJECTS_KEY, is_site_admin
from fwfs.sandbox.fidelity import (
    Fidelity,
    check_delete_reason,
    check_page_limit,
    log,
    trim_child,
    trim_list_info,
    wants_all_info,
    wants_subjects,
)
from fwfs.sandbox.httpd import ApiError, Request, Response, Router
from fwfs.sandbox.store import CONTAINER_TYPES, Container, Store, User, now_iso
from fwfs.sandbox.views import CHILD_TYPE, PARENT_TYPE, SINGULAR, Views

# Fields a client may not change with PUT: identity and place in the hierarchy.
_FROZEN = {"_id", "parents", "container_type", "files", "analyses", "created", "permissions"}


@dataclass
class SiteOptions:
    range_quirk: bool = False
    signed_url: bool = False
    base_url: str = ""
    fidelity: Fidelity = field(default_factory=Fidelity)


class SiteApi:
    def __init__(self, store: Store, options: SiteOptions) -> None:
        self.store = store
        self.options = options
        self.fidelity = options.fidelity
        self.views = Views(store, old_core=self.fidelity.old_core)
        self.access = self.views.access

    # ---- plumbing ---------------------------------------------------------------------

    def authenticate(self, req: Request) -> User:
        header = req.headers.get("Authorization") or ""
        scheme, _, key = header.strip().partition(" ")
        user = None
        if scheme.lower() in ("scitran-user", "bearer") and key:
            user = self.store.user_by_key(key.strip())
        if user is None:
            raise ApiError(401, "not authenticated: a valid API key is required")
        return user

    def require_write(self, req: Request, target: Container | None = None) -> None:
        """Write access; under --strict-permissions also membership of `target`."""
        user: User = req.user
        if not user.can_write:
            raise ApiError(403, f"user {user.id} does not have write permission")
        strict = self.fidelity.strict_permissions
        if target is not None and strict and not self.access.writable(user, target):
            where = f"{target.type} {target.id}"
            log.debug("refused %s %s: %s may not write %s", req.method, req.path, user.id, where)
            raise ApiError(403, f"user {user.id} does not have write permission on {where}")

    def require_site_write(self, req: Request) -> None:
        """A site-wide write (a new group): a project-only member may not."""
        self.require_write(req)
        if self.fidelity.strict_permissions and not self.access.writable(req.user, None):
            who = req.user.id
            log.debug("refused %s %s: %s is a project-only member", req.method, req.path, who)
            raise ApiError(403, f"user {req.user.id} may not create groups")

    def container(self, cid: str, ctype: str | None = None, user: User | None = None) -> Container:
        """The container; with `user` under --strict-permissions, 403 unless they may read it."""
        c = self.store.get_container(cid)
        if c is None or (ctype is not None and c.type != ctype):
            raise ApiError(404, f"{ctype or 'container'} {cid} not found")
        if user is not None:
            self.require_read(user, c)
        return c

    def require_read(self, user: User, c: Container) -> None:
        if self.fidelity.strict_permissions and not self.access.readable(user, c):
            log.debug("refused: %s may not read %s %s", user.id, c.type, c.id)
            raise ApiError(403, f"user {user.id} does not have read access to {c.type} {c.id}")

    def visible(self, user: User, cs: list[Container]) -> list[Container]:
        """Under --strict-permissions, what a finder or resolve may show the user: groups by
        membership (CORE19 groupauth.py:26-43), everything else by read access."""
        if not self.fidelity.strict_permissions:
            return cs
        access = self.access
        return [
            c
            for c in cs
            if (access.member(user, c) if c.type == "group" else access.readable(user, c))
        ]

    def kind(self, plural: str, allow_any: bool = False) -> str | None:
        if allow_any and plural == "containers":
            return None
        if plural not in SINGULAR:
            raise ApiError(404, f"no such endpoint: /api/{plural}")
        return SINGULAR[plural]

    def find(
        self,
        req: Request,
        docs: list[dict[str, Any]],
        id_key: str = "_id",
        containers: bool = False,
    ) -> Response:
        """Finder semantics: filter, sort, then after_id or skip/page, then limit.

        A list of `containers` (not groups) has its `info` trimmed after filtering, as a real
        core filters on the stored documents and projects the answer."""
        try:
            conds = filters.parse_filters(req.query.get("filter", []))
            sort = filters.parse_sort(req.arg("sort") or "")
        except filters.FilterError as err:
            raise ApiError(400, str(err)) from None
        docs = [d for d in docs if filters.matches(d, conds)]
        if sort:
            docs = filters.sort_docs(docs, sort)
        total = len(docs)
        after = req.arg("after_id")
        if after:
            if sort:
                raise ApiError(400, "after_id cannot be used with sort")
            docs = [d for d in docs if str(d.get(id_key, "")) > after]
        limit = check_page_limit(req, self.fidelity)
        skip = req.int_arg("skip") or 0
        page = req.int_arg("page")
        if page is not None and limit:
            # The SDK starts at page=1, so page N skips N-1 pages.
            skip += limit * max(page - 1, 0)
        docs = docs[skip:]
        if limit is not None and limit > 0:
            docs = docs[:limit]
        if containers and self.fidelity.trim_list_info and not wants_all_info(req):
            # Groups have no list projection in CORE19 (containerstorage.py GroupStorage).
            docs = [d if d.get("container_type") == "group" else trim_list_info(d) for d in docs]
        features = (req.headers.get("x-accept-feature") or "").lower()
        if "pagination" in [f.strip() for f in features.split(",")]:
            return Response.json({"count": len(docs), "total": total, "results": docs})
        return Response.json(docs)

    # ---- site -------------------------------------------------------------------------

    def auth_status(self, req: Request) -> Response:
        user: User = req.user
        admin = is_site_admin(user)
        out = {
            "origin": {"type": "user", "id": user.id},
            "user_id": user.id,
            "user_is_admin": admin,
            "is_device": False,
            "roles": ["user"] + (["site_admin"] if admin else []),
        }
        if self.fidelity.old_core:
            del out["user_id"]  # CORE19 base.py:310-319 (audit D11)
        return Response.json(out)

    def user_out(self, user: User) -> dict[str, Any]:
        doc = {k: v for k, v in user.doc.items() if k != PROJECTS_KEY}
        return {**doc, "_id": user.id, "user_id": user.id, "root": is_site_admin(user)}

    def users_self(self, req: Request) -> Response:
        return Response.json(self.user_out(req.user))

    def users(self, req: Request) -> Response:
        return self.find(req, [self.user_out(u) for u in self.store.users()])

    def config(self, req: Request) -> Response:
        signed = self.options.signed_url
        features = {"signed_url": signed, "multipart_signed_url": signed}
        if self.fidelity.audit_trail:
            # The feature's name is a guess: no real site's /config was seen (docs/SANDBOX.md).
            features["audit_trail"] = True
        return Response.json(
            {
                "site": {"id": "fwfs-sandbox", "name": "fwfs sandbox", "api_url": self.api_url},
                "features": features,
                "signed_url": signed,
                "created": self.store.meta_get("created"),
                "modified": self.store.meta_get("created"),
            }
        )

    def version(self, req: Request) -> Response:
        return Response.json(
            {
                "_id": "version",
                "database": 1,
                "release": __version__,
                "flywheel_release": "fwfs-sandbox-" + __version__,
            }
        )

    @property
    def api_url(self) -> str:
        return self.options.base_url + "/api"

    # ---- resolve and lookup -----------------------------------------------------------

    def _match(self, candidates: Sequence[Any], element: str, label_of: Any) -> Any:
        if element.startswith("<id:") and element.endswith(">"):
            wanted = element[4:-1]
            return next((c for c in candidates if label_of(c, True) == wanted), None)
        # Duplicate labels resolve to the oldest container, deterministically.
        return next((c for c in candidates if label_of(c, False) == element), None)

    def _child(self, parent: Container | None, ctype: str, element: str) -> Container | None:
        """One indexed query per path element, rather than reading every sibling."""
        parent_id = None if parent is None else parent.id
        if element.startswith("<id:") and element.endswith(">"):
            return self.store.child(parent_id, ctype, element[4:-1])
        if ctype == "group":
            # Groups are named by their id.
            return self.store.child(parent_id, ctype, element)
        # Duplicate labels resolve to the oldest container, deterministically.
        return self.store.child_labelled(parent_id, ctype, element)

    def _walk(
        self, path: list[str], req: Request
    ) -> tuple[list[dict[str, Any]], Container | None, bool]:
        """Returns the path nodes, the last container and whether the path ended on a file."""
        subjects = not self.fidelity.gate_subjects or wants_subjects(req)
        found: list[Container] = []
        current: Container | None = None
        i = 0
        while i < len(path):
            element = path[i]
            if not isinstance(element, str) or element == "":
                raise ApiError(400, "path elements must be non-empty strings")
            if current is not None and element in ("files", "analyses") and i + 1 < len(path):
                name = path[i + 1]
                if element == "files":
                    if i + 2 != len(path):
                        raise ApiError(404, "a file has no children")
                    recs = self.store.current_files(current.id, "files")
                    if current.type == "analysis":
                        recs += self.store.current_files(current.id, "inputs")
                    rec = self._match(recs, name, lambda r, by_id: r.file_id if by_id else r.name)
                    if rec is None:
                        raise ApiError(404, f"file {name} not found in {current.type}")
                    file_node = self.views.file(rec, current, node=True)
                    return [*self.views.containers(found), file_node], current, True
                analysis = self._child(current, "analysis", name)
                if analysis is None:
                    raise ApiError(404, f"analysis {name} not found")
                self.require_read(req.user, analysis)
                current = analysis
                found.append(analysis)
                i += 2
                continue
            ctype = "group" if current is None else CHILD_TYPE.get(current.type)
            if ctype is None:
                assert current is not None
                raise ApiError(404, f"{element} not found: a {current.type} has no children")
            if ctype == "subject" and not subjects:
                assert current is not None
                ctype = "session"
                child = self._session_of_project(current, element)
            else:
                child = self._child(current, ctype, element)
            if child is None:
                raise ApiError(404, f"{ctype} {element} not found")
            self.require_read(req.user, child)
            current = child
            found.append(child)
            i += 1
        return self.views.containers(found), current, False

    def _session_of_project(self, project: Container, element: str) -> Container | None:
        """A core that gates subjects resolves a project's next path element as a session."""
        sessions = self.store.descendants_of_type(project.id, "session")
        sessions.sort(key=lambda c: c.id)
        found: Container | None = self._match(
            sessions, element, lambda c, by_id: c.id if by_id else c.label
        )
        return found

    @staticmethod
    def _path(req: Request) -> list[str]:
        body = req.json()
        path = body.get("path") if isinstance(body, dict) else None
        if isinstance(path, str):
            path = [p for p in path.split("/") if p]
        if not isinstance(path, list):
            raise ApiError(400, 'body must be {"path": [...]}')
        return path

    def resolve(self, req: Request) -> Response:
        nodes, current, is_file = self._walk(self._path(req), req)
        fid = self.fidelity
        children: list[dict[str, Any]] = []
        if not is_file:
            subjects = not fid.gate_subjects or wants_subjects(req)
            keep = None
            if fid.strict_permissions:
                user = req.user
                keep = lambda c: bool(self.visible(user, [c]))  # noqa: E731
            children = self.views.children_nodes(current, subjects, keep)
        if fid.trim_resolve:
            children = [trim_child(n) for n in children]
        return Response.json({"path": nodes, "children": children})

    def lookup(self, req: Request) -> Response:
        path = self._path(req)
        if not path:
            raise ApiError(400, "lookup needs a non-empty path")
        nodes, _, _ = self._walk(path, req)
        return Response.json(nodes[-1])

    # ---- containers -------------------------------------------------------------------

    def list_all(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"])
        assert ctype is not None
        found = self.visible(req.user, self.store.all_of_type(ctype))
        return self.find(req, self.views.containers(found), containers=True)

    def get_one(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"], allow_any=True)
        c = self.container(req.params["cid"], ctype, req.user)
        return Response.json(self.views.container(c))

    def list_children(self, req: Request) -> Response:
        ptype = self.kind(req.params["kind"], allow_any=True)
        parent = self.container(req.params["cid"], ptype, req.user)
        child = SINGULAR.get(req.params["children"])
        if child is None:
            raise ApiError(404, f"no such endpoint: {req.path}")
        if child == "analysis":
            found = self.store.children(parent.id, "analysis")
        elif CHILD_TYPE.get(parent.type) == child:
            found = self.store.children(parent.id, child)
        elif (
            CONTAINER_TYPES.index(child) > CONTAINER_TYPES.index(parent.type)
            and child != "analysis"
        ):
            # project -> sessions/acquisitions, subject -> acquisitions: any depth below.
            found = self.store.descendants_of_type(parent.id, child)
        else:
            raise ApiError(404, f"a {parent.type} has no {req.params['children']}")
        found = self.visible(req.user, found)
        return self.find(req, self.views.containers(found), containers=True)

    def create(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"])
        self.require_write(req)
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        if ctype == "group":
            self.require_site_write(req)
            gid = body.get("_id") or body.get("id")
            if not gid or not isinstance(gid, str):
                raise ApiError(400, "a group needs an _id")
            if self.store.get_container(gid) is not None:
                raise ApiError(409, f"group {gid} already exists")
            doc = {k: v for k, v in body.items() if k not in ("_id", "id", "label")}
            c = self.store.insert_container("group", None, body.get("label") or gid, doc, cid=gid)
            return Response.json({"_id": c.id})
        if ctype not in PARENT_TYPE:
            raise ApiError(405, f"{req.params['kind']} are not created with this endpoint")
        ptype = PARENT_TYPE[ctype]
        if ctype == "session":
            parent_id: Any = self._session_subject(req, body)
        else:
            parent_id = body.pop(ptype, None)
        if not isinstance(parent_id, str):
            raise ApiError(400, f"a {ctype} needs a {ptype}")
        parent = self.container(parent_id, ptype)
        self.require_write(req, parent)
        return Response.json({"_id": self.insert_child(parent, ctype, body).id})

    def _session_subject(self, req: Request, body: dict[str, Any]) -> str:
        """Sessions name their project and a subject by _id, or by code/label (created if new)."""
        project = self.container(str(body.pop("project", "")), "project")
        self.require_write(req, project)
        subject = body.pop("subject", None) or {}
        if not isinstance(subject, dict):
            raise ApiError(400, "subject must be an object")
        if subject.get("_id"):
            s = self.container(str(subject["_id"]), "subject")
            if s.parent_id != project.id:
                raise ApiError(400, "subject belongs to another project")
            return s.id
        code = subject.get("code") or subject.get("label") or body.get("label")
        if not code:
            raise ApiError(400, "a session needs a subject")
        for s in self.store.children(project.id, "subject"):
            if s.label == code:
                return s.id
        fields = {k: v for k, v in subject.items() if k not in ("code", "label")}
        return self.insert_child(project, "subject", {"label": code, **fields}).id

    def insert_child(self, parent: Container, ctype: str, body: dict[str, Any]) -> Container:
        label = body.pop("label", None)
        if ctype == "subject":
            label = label or body.get("code")
        if not isinstance(label, str) or not label:
            raise ApiError(400, f"a {ctype} needs a label")
        parents = dict(parent.doc.get("parents", {}))
        parents[parent.type] = parent.id
        return self.store.insert_container(ctype, parent.id, label, {**body, "parents": parents})

    def update(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"], allow_any=True)
        c = self.container(req.params["cid"], ctype)
        self.require_write(req, c)
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        bad = sorted(set(body) & _FROZEN)
        if bad:
            raise ApiError(400, f"cannot modify {', '.join(bad)}")
        label = body.pop("label", c.label)
        if not isinstance(label, str) or not label:
            raise ApiError(400, "label must be a non-empty string")
        doc = {**c.doc, **body, "modified": now_iso()}
        self.store.update_container(c.id, label, doc)
        return Response.json({"modified": 1, "jobs_spawned": 0})

    def delete(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"], allow_any=True)
        c = self.container(req.params["cid"], ctype)
        self.require_write(req, c)
        check_delete_reason(req, self.fidelity)
        removed = self.store.delete_container_tree(c.id)
        return Response.json({"deleted": removed, "not_found": 0, "delete_scheduled": 0})

    def patch_info(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"], allow_any=True)
        c = self.container(req.params["cid"], ctype)
        self.require_write(req, c)
        c.doc["info"] = apply_info_patch(c.doc.get("info") or {}, req.json())
        c.doc["modified"] = now_iso()
        self.store.update_container(c.id, c.label, c.doc)
        return Response.json({"modified": 1, "jobs_spawned": 0})

    def add_tag(self, req: Request) -> Response:
        ctype = self.kind(req.params["kind"], allow_any=True)
        c = self.container(req.params["cid"], ctype)
        self.require_write(req, c)
        body = req.json()
        tag = req.params.get("tag") or (body.get("value") if isinstance(body, dict) else None)
        if not isinstance(tag, str) or not tag:
            raise ApiError(400, "a tag needs a value")
        tags = list(c.doc.get("tags") or [])
        if req.method == "DELETE":
            if tag not in tags:
                raise ApiError(404, f"tag {tag} not found")
            tags.remove(tag)
        elif tag not in tags:
            tags.append(tag)
        c.doc["tags"] = tags
        self.store.update_container(c.id, c.label, c.doc)
        return Response.json({"modified": 1})

    def add_analysis(self, req: Request) -> Response:
        ptype = self.kind(req.params["kind"], allow_any=True)
        parent = self.container(req.params["cid"], ptype)
        self.require_write(req, parent)
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        inputs = body.pop("inputs", None) or []
        analysis = self.insert_child(parent, "analysis", body)
        for ref in inputs:
            self._copy_input(analysis, ref)
        return Response.json({"_id": analysis.id})

    def _copy_input(self, analysis: Container, ref: Any) -> None:
        if not isinstance(ref, dict):
            raise ApiError(400, "an analysis input is {type, id, name}")
        src_parent = self.container(str(ref.get("id", "")), ref.get("type"))
        rec = self.store.file_by_name(src_parent.id, str(ref.get("name", "")))
        if rec is None:
            raise ApiError(404, f"input file {ref.get('name')} not found")
        self.store.link_file(rec, analysis.id, "inputs")

    # ---- jobs -------------------------------------------------------------------------

    def jobs(self, req: Request) -> Response:
        return self.find(req, self.store.jobs())

    def job(self, req: Request) -> Response:
        for job in self.store.jobs():
            if job["_id"] == req.params["jid"]:
                # A single job (JobOutput) keys its inputs by input name; lists use a list.
                inputs = {
                    str(i.get("input") or f"input{n}"): i
                    for n, i in enumerate(job.get("inputs") or [])
                    if isinstance(i, dict)
                }
                return Response.json({**job, "id": job["_id"], "inputs": inputs})
        raise ApiError(404, f"job {req.params['jid']} not found")

    def gears(self, req: Request) -> Response:
        gears = {}
        for job in self.store.jobs():
            info = job.get("gear_info") or {}
            gears[job.get("gear_id")] = {
                "_id": job.get("gear_id"),
                "gear": {"name": info.get("name"), "version": info.get("version")},
                "category": info.get("category", "converter"),
            }
        return self.find(req, [g for g in gears.values() if g["_id"]])

    # ---- routes -----------------------------------------------------------------------

    def register(self, r: Router) -> None:
        r.add("GET", "/api/auth/status", self.auth_status)
        r.add("GET", "/api/users/self", self.users_self)
        r.add("GET", "/api/users", self.users)
        r.add("GET", "/api/config", self.config, auth=False)
        r.add("GET", "/api/version", self.version, auth=False)
        r.add("POST", "/api/resolve", self.resolve)
        r.add("POST", "/api/lookup", self.lookup)
        r.add("GET", "/api/jobs", self.jobs)
        r.add("GET", "/api/jobs/{jid}", self.job)
        r.add("GET", "/api/gears", self.gears)
        r.add("GET", "/api/{kind}", self.list_all)
        r.add("POST", "/api/{kind}", self.create)
        r.add("GET", "/api/{kind}/{cid}", self.get_one)
        r.add("PUT", "/api/{kind}/{cid}", self.update)
        r.add("DELETE", "/api/{kind}/{cid}", self.delete)
        r.add("PATCH", "/api/{kind}/{cid}/info", self.patch_info)
        r.add("POST", "/api/{kind}/{cid}/tags", self.add_tag)
        r.add("PUT", "/api/{kind}/{cid}/tags/{tag}", self.add_tag)
        r.add("DELETE", "/api/{kind}/{cid}/tags/{tag}", self.add_tag)
        r.add("POST", "/api/{kind}/{cid}/analyses", self.add_analysis)
        r.add("GET", "/api/{kind}/{cid}/{children}", self.list_children)


def apply_info_patch(info: dict[str, Any], body: Any) -> dict[str, Any]:
    """`PATCH …/info` with {set}, {replace} or {delete}, as the SDK's InfoMethods send it."""
    if not isinstance(body, dict):
        raise ApiError(400, "info patch must be an object")
    info = copy.deepcopy(info)
    if "replace" in body:
        if not isinstance(body["replace"], dict):
            raise ApiError(400, "replace must be an object")
        info = dict(body["replace"])
    if "set" in body:
        if not isinstance(body["set"], dict):
            raise ApiError(400, "set must be an object")
        info.update(body["set"])
    for key in body.get("delete") or []:
        info.pop(key, None)
    return info
