"""The open-file limit is raised to what the hard limit allows (issue 13 item 3)."""

from __future__ import annotations

import resource
import subprocess
import sys

from sansio_gateway.adapters.rlimits import CEILING, raise_open_file_limit


def test_the_soft_limit_is_raised_to_the_hard_limit_in_a_child() -> None:
    # In a child process whose soft limit starts low, so this process's own
    # limits are not changed by the test.
    code = (
        "import resource\n"
        "from sansio_gateway.adapters.rlimits import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "fds = raise_open_file_limit()\n"
        "print(fds.before, fds.after, hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "print(fds.describe())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    before, after, hard, now = (int(x) for x in out[0].split())
    assert before == 256
    assert after == now == (CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING))
    assert out[1].startswith(f"open-file limit raised from 256 to {after}")


def test_nothing_changes_when_the_soft_limit_is_already_at_the_hard_limit() -> None:
    fds = raise_open_file_limit()  # the first call may raise it
    again = raise_open_file_limit()
    assert again.before == again.after == fds.after
    assert "raised" not in again.describe()
