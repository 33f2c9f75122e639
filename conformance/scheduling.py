"""The order checks run in: the long ones first, each on its own worker.

A check's duration is mostly its clause's own waits (keepalive probes, paced
one-byte segments, many clients, fuzzing), whatever the target, so a short table of
name patterns is enough to know which ones are long.  Only the order depends on it:
a worker that starts a 3 s check last keeps the whole run waiting for it, one that
starts it first overlaps it with everything the other workers do.  Verdicts never
depend on the order (every check starts its own programs).
"""

from __future__ import annotations

import fnmatch
from typing import Any

# Check function names (globs), longest first (seconds: the reference, idle machine).
LONG_CHECKS = (
    "test_malformed_mixed_with_valid",  # JSON fuzz (hypothesis): 2-15 s
    "test_random_splits",               # JSON fuzz: 4-9 s
    "test_model_store",                 # JSON stateful model: 4-6 s
    "test_*_fuzz",                      # ECHO fuzz against a live server: 1-5 s
    "test_*keepalive*",                 # keepalive idle + probes: ~3 s
    "test_acknowledged_writes_survive_sigkill",  # JSON-6: ~2.5 s
    "test_many_clients_at_once",        # LIFE-7: up to 2 s
    "test_concurrent_inserts",          # JSON: ~2 s
    "test_*rcvbuf*",                    # OPT-RCVBUF calibration: 1-4 s
    "test_linger_abort",
    "test_no_sigpipe_death",            # ERR-6: ~1 s
    "test_one_byte_segments",           # CLI-2: 13 paced segments, ~1.3 s
    "test_*backlog*",
)


# The fuzz checks (hypothesis against the target): what a campaign runs.
FUZZ_CHECKS = ("test_*_fuzz", "test_random_splits", "test_model_store",
               "test_malformed_mixed_with_valid")


def _name(item: Any) -> str:
    return str(getattr(item, "originalname", None) or item.name.split("[")[0])


def is_fuzz_check(item: Any) -> bool:
    return any(fnmatch.fnmatchcase(_name(item), p) for p in FUZZ_CHECKS)


def run_order(item: Any) -> int:
    """Sort key of a collected check: its rank in LONG_CHECKS, the rest after."""
    name = _name(item)
    for rank, pattern in enumerate(LONG_CHECKS):
        if fnmatch.fnmatchcase(name, pattern):
            return rank
    return len(LONG_CHECKS)


def long_first_scheduler(config: Any, log: Any) -> Any:
    """An xdist LoadScheduling whose initial distribution deals the first checks
    one at a time, round-robin (xdist's own gives each worker a consecutive chunk:
    the first worker would get all the long ones).  The rest is xdist's."""
    from xdist.scheduler import LoadScheduling

    class LongFirst(LoadScheduling):  # type: ignore[misc]
        def schedule(self) -> None:
            if self.collection is not None or not self.nodes:  # type: ignore[has-type]
                super().schedule()
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            collection = next(iter(self.node2collection.values()))
            self.collection = collection
            self.pending[:] = range(len(collection))
            if not collection:
                return
            if self.maxschedchunk is None:  # type: ignore[has-type]
                self.maxschedchunk = len(collection)
            for _ in range(2):  # two each: a worker never idles waiting for its next
                for node in self.nodes:
                    self._send_tests(node, 1)
            if not self.pending:
                for node in self.nodes:
                    node.shutdown()

    return LongFirst(config, log)
