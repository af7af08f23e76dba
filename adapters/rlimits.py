"""The process's open-file limit, raised at start where the hard limit allows.

Every stream holds two sockets (the client's and the backend's), so a
gateway serving thousands of streams needs thousands of descriptors; many
systems start processes with a soft limit of 1,024.  The soft limit is
raised to the hard limit (capped, since some systems report an unlimited
hard limit), which needs no privilege; the hard limit itself is left alone.
"""

from __future__ import annotations

import resource

__all__ = ["FdLimit", "raise_open_file_limit"]

# Far above any load one process can carry; an "unlimited" hard limit is
# capped here so the soft limit stays a number.
CEILING = 1_048_576


class FdLimit:
    def __init__(self, before: int, after: int, hard: int) -> None:
        self.before, self.after, self.hard = before, after, hard

    def describe(self) -> str:
        hard = "unlimited" if self.hard == resource.RLIM_INFINITY else str(self.hard)
        if self.after > self.before:
            return f"open-file limit raised from {self.before} to {self.after} (hard limit {hard})"
        return f"open-file limit {self.after} (hard limit {hard})"


def raise_open_file_limit() -> FdLimit:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            want = soft  # a sandbox may refuse even this; serve with what there is
        return FdLimit(soft, want, hard)
    return FdLimit(soft, soft, hard)
