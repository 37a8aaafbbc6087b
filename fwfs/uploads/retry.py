"""The one retry policy of uploads: how often a request of an upload may be sent, and how
long to wait before sending it again.

An upload is a few requests: ``GET /config`` when the site's upload mode is not known, then
a multipart POST; or a ticket POST, a PUT to storage per part and the ticket's finish POST.
Each close() gets one `SendBudget` from the mount's `RetryPolicy`, and two places spend it:

- the client, for one request that failed in a way that sending it again may fix (5xx,
  429, a dropped connection, a read timeout): it asks ``budget.again(request, error)`` and,
  if allowed, sends that request alone again (the other parts are not sent again);
- the Uploader, for a whole upload that failed with ``RemoteError`` (a request whose own
  retries are spent, a storage that refuses an expired signed URL, a finish POST for a
  ticket the site no longer knows): ``budget.restart(error)`` allows a new try, with a new
  ticket and every part sent again.

Both count against the same limit: no request of one close() is ever sent more than
``attempts`` times, whichever mix of in-place retries and restarts got it there. Any other
error (4xx from the API: EACCES, EEXIST, EINVAL...) is never retried. Before this, the
client's transport retried each PUT (8 sends) inside each of the Uploader's 3 attempts:
up to 24 PUTs of one part for one close(). Sending each request once per attempt instead
would have bounded that, but one failed part of a multi-GB upload would then send every
part again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fwfs.config import ClientConfig
from fwfs.errors import InvalidArgument

log = logging.getLogger("fwfs.uploads")


@dataclass(frozen=True)
class RetryPolicy:
    """Each request of an upload is sent at most ``attempts`` times; before its n-th
    resend (counted over the whole close(), restarts included) the upload waits
    ``backoff * 2**(n-1)``, at most ``backoff_max``. No jitter: one upload per close(), and
    a program waiting in close() is better served by a known bound."""

    # The defaults are what ``from_config`` gives for the default ClientConfig.
    attempts: int = 3
    backoff: float = 1.0
    backoff_max: float = 15.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.backoff_max < 0:
            raise InvalidArgument("attempts must be at least 1 and backoffs not negative")

    @classmethod
    def from_config(cls, config: ClientConfig) -> RetryPolicy:
        """The policy for uploads by a client with ``config``: its ``upload_attempts``,
        its wait cap, and the waits of its own retries doubled (1 s, 2 s by default)."""
        return cls(
            attempts=config.upload_attempts,
            backoff=2 * config.backoff_factor,
            backoff_max=config.backoff_max,
        )

    def delay(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th failed send of a request (1-based)."""
        return min(self.backoff * 2.0 ** (failed - 1), self.backoff_max)

    def budget(self, what: str, sleep: Callable[[float], None] = time.sleep) -> SendBudget:
        """The budget of one close() of ``what`` (a path, for the log)."""
        return SendBudget(self, what, sleep)


class SendBudget:
    """What one close() may still send, under its `RetryPolicy`. Not thread-safe: one
    upload, one thread.

    It bounds sends without seeing them: a request is sent at most once per try of the
    whole upload (``rounds``) plus once per retry in place (``retried``), so each ``again``
    and ``restart`` allows a send only while that sum stays within ``attempts``.
    """

    def __init__(self, policy: RetryPolicy, what: str, sleep: Callable[[float], None]) -> None:
        self.policy = policy
        self.what = what
        self._sleep = sleep
        self._rounds = 1
        self._retried: dict[str, int] = {}

    def again(self, request: str, error: Exception) -> bool:
        """``request`` (a name the caller keeps stable over retries and restarts, e.g.
        "PUT part 2") failed with ``error``, which sending it again may fix: True, after
        the policy's wait, if it may be sent again; False: give up, raise ``error``."""
        sent = self._rounds + self._retried.get(request, 0)
        if sent >= self.policy.attempts:
            return False
        self._wait(sent, f"{request} of {self.what!r} failed ({error}); sending it again")
        self._retried[request] = self._retried.get(request, 0) + 1
        return True

    def restart(self, error: Exception) -> bool:
        """The whole upload failed with ``error``: True, after the policy's wait, if it may
        be tried again from its first request (every request sent once more)."""
        sent = self._rounds + max(self._retried.values(), default=0)
        if sent >= self.policy.attempts:
            return False
        self._wait(sent, f"upload of {self.what!r} failed ({error}); starting it again")
        self._rounds += 1
        return True

    @property
    def rounds(self) -> int:
        """Tries of the whole upload so far."""
        return self._rounds

    def _wait(self, sent: int, why: str) -> None:
        delay = self.policy.delay(sent)
        log.info("%s in %.1f s (send %d of at most %d)", why, delay, sent + 1, self.policy.attempts)
        self._sleep(delay)
