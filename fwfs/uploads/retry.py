"""The one retry policy of uploads: how often an upload is tried, and how long to wait.

An upload is a few requests (a multipart POST; or a ticket, the PUTs to storage and the
ticket's finish). The Uploader tries the whole upload ``attempts`` times, and the upload
callable sends each of its requests once per attempt (``SiteClient.upload_file(...,
retry=False)``): so no request of one upload is ever sent more than ``attempts`` times.
Before, the client's transport retried each PUT on its own (8 times) inside each of the
Uploader's 3 attempts: up to 24 PUTs for one close().
"""

from __future__ import annotations

from dataclasses import dataclass

from fwfs.config import ClientConfig
from fwfs.errors import InvalidArgument

# docs/SEMANTICS.md: a failed upload is EIO "after three attempts". ClientConfig has no
# field for it (its `retries` is per request, for reads); a knob would belong there.
UPLOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, ``attempts - 1`` waits between them: ``backoff``, then
    twice that, and so on, at most ``backoff_max``. No jitter: one upload per close(), and
    a program waiting in close() is better served by a known bound."""

    # The defaults are what ``from_config`` gives for the default ClientConfig.
    attempts: int = UPLOAD_ATTEMPTS
    backoff: float = 1.0
    backoff_max: float = 15.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.backoff_max < 0:
            raise InvalidArgument("attempts must be at least 1 and backoffs not negative")

    @classmethod
    def from_config(cls, config: ClientConfig) -> RetryPolicy:
        """The policy for uploads by a client with ``config``: its wait cap, and the
        waits of its own retries doubled (1 s, 2 s with the defaults)."""
        return cls(
            attempts=UPLOAD_ATTEMPTS,
            backoff=2 * config.backoff_factor,
            backoff_max=config.backoff_max,
        )

    def delay(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th failed attempt (1-based)."""
        return min(self.backoff * 2.0 ** (failed - 1), self.backoff_max)
