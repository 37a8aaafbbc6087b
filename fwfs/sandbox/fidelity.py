"""Real-server behaviours the sandbox can switch on (`fwfs serve --strict` and single flags).

Each one mirrors a divergence of docs/../shared/reference/real-server-fidelity.md (D1-D13):
the sandbox says "no" where a real core does, so clients meet those answers in tests first.
Default: all off, and the sandbox answers exactly as it always did.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from fwfs.sandbox.httpd import ApiError, Request

log = logging.getLogger("fwfs.sandbox")

# flywheel-sdk 23 `ContainerDeleteReason` (models/container_delete_reason.py).
DELETE_REASONS = frozenset(
    {
        "duplicate_data",
        "data_is_not_part_of_study",
        "data_incomplete_or_corrupt",
        "data_structured_incorrectly",
        "data_has_been_exported_or_moved",
        "container_is_empty",
        "analysis_or_processing_failed_or_cancelled",
        "compliance_consent_withdrawn",
        "compliance_phi",
        "compliance_data_policy",
        "test_data",
        "packfile_cleanup",
    }
)


@dataclass(frozen=True)
class Fidelity:
    trim_resolve: bool = False
    trim_list_info: bool = False
    gate_subjects: bool = False
    strict_permissions: bool = False
    redirect_downloads: bool = False
    redirect_ignores_range: bool = False
    default_page_limit: int = 0  # 0: no default, a finder without `limit` answers everything
    max_limit: int = 0  # 0: any `limit` is accepted
    analysis_io_split: bool = False
    audit_trail: bool = False
    info_delay: float = 0.0
    refuse_encoded_slash: bool = False
    old_core: bool = False
    private_ca: bool = False
    signed_url_ttl: float = 60.0

    def strict(self, explicit: dict[str, Any]) -> Fidelity:
        """`--strict`: every real-core behaviour except the variants (`--old-core`,
        `--redirect-ignores-range`); numbers given explicitly win over strict's."""
        numbers: dict[str, Any] = {"default_page_limit": 100, "max_limit": 500, "info_delay": 2.0}
        numbers = {k: v for k, v in numbers.items() if explicit.get(k) is None}
        return replace(
            self,
            trim_resolve=True,
            trim_list_info=True,
            gate_subjects=True,
            strict_permissions=True,
            redirect_downloads=True,
            analysis_io_split=True,
            audit_trail=True,
            refuse_encoded_slash=True,
            private_ca=True,
            **numbers,
        )


def wants_subjects(req: Request) -> bool:
    """CORE19 base.py: `'subject-container' in x-accept-feature`, a case-blind substring."""
    return "subject-container" in (req.headers.get("x-accept-feature") or "").lower()


def trim_child(node: dict[str, Any]) -> dict[str, Any]:
    """A resolve child as the real resolver projects it (CORE19 resolver.py:289-297,
    containerstorage.py list projections)."""
    kind = node.get("container_type")
    if kind == "file":
        node.pop("info", None)
        return node
    for key in ("files", "info", "tags"):
        node.pop(key, None)
    if kind == "acquisition":
        node.pop("collections", None)
    elif kind == "session":
        node.pop("analyses", None)
        node.pop("age", None)
    return node


def wants_all_info(req: Request) -> bool:
    """`include_all_info=true`: "Include all info in returned objects" (SDK 23, every finder)."""
    return (req.arg("include_all_info") or "").lower() in ("true", "1")


def trim_list_info(doc: dict[str, Any]) -> dict[str, Any]:
    """A container in a list answer as a real core sends it: of its `info` (and its files',
    its joined subject's, its embedded analyses') only the `BIDS` key, and `info_exists`
    saying whether the whole was empty (CORE19 basecontainerstorage.py:389-424,
    containerutil.py:268-277 `sanitize_info`, formalized_keys = ['BIDS'])."""
    _sanitize_info(doc)
    for key in ("files", "analyses"):
        for item in doc.get(key) or []:
            _sanitize_info(item)
    subject = doc.get("subject")
    if isinstance(subject, dict):
        _sanitize_info(subject)
    return doc


def _sanitize_info(doc: dict[str, Any]) -> None:
    info = doc.get("info") or {}
    doc["info_exists"] = bool(info)
    doc["info"] = {"BIDS": info["BIDS"]} if "BIDS" in info else {}


def check_page_limit(req: Request, fid: Fidelity) -> int | None:
    """The `limit` a finder applies: the site default when none is given; 422 above the
    maximum, in FastAPI's validation shape."""
    limit = req.int_arg("limit")
    if limit is None:
        if fid.default_page_limit:
            log.debug("no limit on %s: answering the first %d", req.path, fid.default_page_limit)
            return fid.default_page_limit
        return None
    if fid.max_limit and limit > fid.max_limit:
        log.debug("refused limit=%d > %d on %s", limit, fid.max_limit, req.path)
        raise ApiError(
            422,
            f"limit must be less than or equal to {fid.max_limit}",
            [
                {
                    "loc": ["query", "limit"],
                    "msg": f"ensure this value is less than or equal to {fid.max_limit}",
                    "type": "value_error.number.not_le",
                    "ctx": {"limit_value": fid.max_limit},
                }
            ],
        )
    return limit


def check_delete_reason(req: Request, fid: Fidelity) -> None:
    if not fid.audit_trail:
        return
    reason = req.arg("delete_reason")
    if reason in DELETE_REASONS:
        return
    log.debug("refused %s %s: delete_reason %r", req.method, req.path, reason)
    raise ApiError(
        422,
        "a valid delete_reason is required: audit trail is enabled",
        [
            {
                "loc": ["query", "delete_reason"],
                "msg": "value is not a valid enumeration member; permitted: "
                + ", ".join(sorted(DELETE_REASONS)),
                "type": "type_error.enum",
            }
        ],
    )


def archive_delay(req: Request, fid: Fidelity) -> None:
    """A real core opens the archive from object storage before answering."""
    if fid.info_delay > 0:
        log.debug("delaying %s by %.2fs (archive read)", req.path, fid.info_delay)
        time.sleep(fid.info_delay)


def refuse_encoded_slash(req: Request, fid: Fidelity) -> None:
    """A FastAPI `{file_name}` path parameter never matches a segment holding `%2F`."""
    if fid.refuse_encoded_slash and "%2f" in req.raw_path.lower():
        log.debug("refused %s: %%2F in a name segment", req.raw_path)
        raise ApiError(404, "Not Found")
