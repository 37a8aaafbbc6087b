"""HTTP client for the Flywheel REST API, and the only package that imports requests.

Requests go out the way flywheel-sdk sends them (as recorded in the project's Flywheel API
reference, flywheel-api.md): the same paths, the same ``x-accept-feature`` header, the
same upload flows. The differences are deliberate: every failure becomes a typed
``FwfsError``, retries are bounded in wall time, and a ranged read never silently turns
into a whole-file download.

``api`` is the client the layers above use; ``uploads`` its upload calls; ``transport``
one request with its retries; ``wire`` what goes on the wire and how answers are read;
``session`` the requests session (key, TLS trust, pools); ``signed`` signed URLs and
probes.
"""

from fwfs.client.api import FlywheelClient
from fwfs.client.signed import ProbeResult
from fwfs.client.wire import RangeIgnored
from fwfs.models import Json, Kind

__all__ = ["FlywheelClient", "Json", "Kind", "ProbeResult", "RangeIgnored"]
