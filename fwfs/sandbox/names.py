"""The sandbox's users and the demo's names, apart from the seeding: a site without the demo
needs them too, and must start without the imaging libraries the seeding imports."""

from __future__ import annotations

# Every site's users (their keys are made with the site): an admin, a reader, and a
# project-only member of the demo's first project.
ADMIN_USER = "ada@fwfs.example"
READER_USER = "rosalind@fwfs.example"
MEMBER_USER = "grace@fwfs.example"

# The demo's group and the project its member belongs to.
GROUP = "flywheel"
PROJECT = "Anxiety Study"
