"""Who is a member of what: container `permissions`, and the checks of `--strict-permissions`.

A user whose doc has `sandbox_projects` is a member of those projects only (and of what they
hold); every other user is a member everywhere. The demo's Grace is such a project-only
member: the case real cores had to fix twice (FLYW-612, FLYW-1128; audit D3).
"""

from __future__ import annotations

from typing import Any

from fwfs.sandbox.store import Container, Store, User

PROJECTS_KEY = "sandbox_projects"


def is_site_admin(user: User) -> bool:
    return "site_admin" in (user.doc.get("roles") or [])


def projects_of(user: User) -> set[str] | None:
    """The projects a project-only member belongs to; None for a member of everything."""
    projects = user.doc.get(PROJECTS_KEY)
    return None if projects is None else set(projects)


def project_of(c: Container) -> str | None:
    if c.type == "project":
        return c.id
    return (c.doc.get("parents") or {}).get("project")


def _entry(user: User) -> dict[str, Any]:
    role = "admin" if is_site_admin(user) else "read-write" if user.can_write else "read-only"
    return {"_id": user.id, "access": "rw" if user.can_write else "ro", "role_ids": [role]}


class Access:
    def __init__(self, store: Store) -> None:
        self.store = store

    def permissions_of(self) -> Any:
        """A function container -> its `permissions` list, for one batch of containers:
        the users are read once."""
        everywhere: list[dict[str, Any]] = []
        some: list[tuple[int, dict[str, Any], set[str]]] = []
        for n, user in enumerate(self.store.users()):
            projects = projects_of(user)
            if projects is None:
                everywhere.append(_entry(user))
            else:
                some.append((n, _entry(user), projects))
        if not some:
            return lambda c: everywhere

        def of(c: Container) -> list[dict[str, Any]]:
            project = project_of(c)
            extra = [e for _, e, projects in some if project in projects]
            return everywhere + extra if extra else everywhere

        return of

    # ---- --strict-permissions ---------------------------------------------------------

    def groups_via_projects(self, user: User) -> set[str]:
        projects = projects_of(user) or set()
        found = self.store.containers_by_id(projects)
        return {str((p.doc.get("parents") or {}).get("group")) for p in found.values()}

    def member(self, user: User, c: Container) -> bool:
        """In the container's own `permissions`."""
        projects = projects_of(user)
        return projects is None or project_of(c) in projects

    def readable(self, user: User, c: Container) -> bool:
        """Members read; a group is readable by a member of any of its projects
        (CORE19 resolvehandler.py:73-92, FLYW-612; GET /groups/{id}, FLYW-1128)."""
        if self.member(user, c):
            return True
        return c.type == "group" and c.id in self.groups_via_projects(user)

    def writable(self, user: User, c: Container | None) -> bool:
        """Only members with write access write; a project-only member creates no groups."""
        if not user.can_write:
            return False
        if c is None:
            return projects_of(user) is None
        return self.member(user, c)
