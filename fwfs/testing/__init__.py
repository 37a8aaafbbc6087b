"""Test support that ships with the package, as mountpoint-s3 ships its mock and failure
clients: what tests/ and scripts/bench* share, and what a user's own tests of code on top of
fwfs may use. Nothing under fwfs/ outside this package imports it."""
