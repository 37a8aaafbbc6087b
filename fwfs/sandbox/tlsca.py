"""`--private-ca`: a certificate authority of the sandbox's own, in no trust store (audit D1).

Real on-premises sites often serve certificates of a company CA that is in the OS trust store
but not in certifi; a client that trusts only certifi then cannot connect.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def mint(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1/localhost and the path of the CA's PEM (new each start)."""
    import trustme  # the sandbox extra; only this flag needs it

    ca = trustme.CA(organization_name="fwfs sandbox private CA")
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, ca_path
