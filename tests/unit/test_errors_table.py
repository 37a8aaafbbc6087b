"""The published errno mapping: what a failed HTTP status turns into at the FUSE boundary."""

from __future__ import annotations

import errno

import pytest

from fwfs import errors
from fwfs.errors import ERRNO_TABLE, FwfsError, errno_for_status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, errno.EINVAL),
        (401, errno.EACCES),
        (403, errno.EACCES),
        (404, errno.ENOENT),
        (409, errno.EEXIST),
        (413, errno.EFBIG),
        (416, errno.EINVAL),
        (422, errno.EINVAL),
        (429, errno.EIO),
        (500, errno.EIO),
        (502, errno.EIO),
        (503, errno.EIO),
        (504, errno.EIO),
        (418, errno.EIO),
        (451, errno.EIO),
    ],
)
def test_status_maps_to_errno(status: int, expected: int) -> None:
    assert errno_for_status(status).errno == expected


def test_table_rows_name_the_errno_their_class_raises() -> None:
    for row in ERRNO_TABLE:
        assert errno.errorcode[row.error.errno] == row.errno_name, row
        assert row.why


def test_every_error_class_is_documented_in_the_table() -> None:
    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, FwfsError) and obj is not FwfsError
    }
    documented = {row.error for row in ERRNO_TABLE}
    assert classes - documented == set()


def test_errors_carry_request_context_in_attributes_and_message() -> None:
    error = errors.NotFound.for_request(
        "GET", "/api/projects/x", "HTTP 404: gone", status=404, server_message="gone"
    )
    assert (error.errno, error.status, error.method, error.path) == (
        errno.ENOENT,
        404,
        "GET",
        "/api/projects/x",
    )
    assert str(error) == "GET /api/projects/x: HTTP 404: gone"
