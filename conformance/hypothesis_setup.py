"""How a sockconf session sets up hypothesis: its profiles, the seed every fuzz
finding's reproduce line names, the example database of a campaign — applied only
once hypothesis is imported.

`import hypothesis` costs about 0.1 s (idle machine) to 1 s (loaded) per process,
in the controller and in every xdist worker, and a run of the hello profile has
no check that uses it.  So the session does not hand its profile and seed to
hypothesis' pytest plugin (which imports hypothesis as soon as one of its options
is set); it keeps them here and applies them the moment anything imports
hypothesis (an import hook), before any test code can use it.  A session where
hypothesis is already imported (another plugin, a `--pytest-arg` option of
hypothesis' own) gets them at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

PROFILES = ("ci", "dev", "nightly")
# max_examples of each profile (per fuzz check).  ci is derandomized: every run of
# a target draws the same examples.
MAX_EXAMPLES = {"ci": 25, "dev": 100, "nightly": 5000}
# A campaign fuzzes in rounds until its time is up; a round is the profile's
# max_examples but at most this many, so that the last one ends near the deadline.
CAMPAIGN_ROUND = 1000


@dataclass
class HypothesisChoice:
    """The profile and seed of one session, and where a campaign keeps its
    example database (None: no database, nothing written to the user's cwd)."""
    profile: str
    seed: str
    database: str | None = None
    campaign: bool = False    # rounds until a time is up: each round at most 1000 examples

    def apply(self) -> None:
        """Register our profiles, load the chosen one, force the seed.  Idempotent."""
        from hypothesis import HealthCheck, configuration, core, settings

        from conformance.harness.testbed import scratch

        # Checks drive real processes: examples are slow and data-heavy by nature,
        # and a server is reused across examples on purpose.  database None unless
        # a campaign asked for one under its artifacts dir: a conformance run never
        # writes a .hypothesis/ folder into the user's cwd; a finding is replayed
        # from its seed (or derandomized profile) instead.
        slow = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                HealthCheck.data_too_large, HealthCheck.large_base_example]
        database: Any = None
        if self.database:
            from hypothesis.database import DirectoryBasedExampleDatabase
            database = DirectoryBasedExampleDatabase(self.database)
        common: dict[str, Any] = {"deadline": None, "suppress_health_check": slow,
                                  "print_blob": True, "database": database}
        # hypothesis still keeps a cache (.hypothesis/constants) in its home
        # directory, by default in the cwd: point it at this run's scratch dir.
        configuration.set_hypothesis_home_dir(str(scratch("sockconf-hypothesis-")))
        for name in PROFILES:
            examples = MAX_EXAMPLES[name]
            if self.campaign:
                examples = min(examples, CAMPAIGN_ROUND)
            settings.register_profile(name, max_examples=examples,
                                      derandomize=name == "ci" and database is None, **common)
        settings.load_profile(self.profile)
        # (as hypothesis' own --hypothesis-seed: an integer when it reads as one)
        seed: Any = int(self.seed) if self.seed.lstrip("-").isdigit() else self.seed
        if database is None:
            core.global_force_seed = seed
        # else: hypothesis ignores its database under a forced seed; a run with a
        # database (a campaign, a campaign finding's replay) draws its own, and a
        # finding replays from the database (checks/campaign.py).


def choose(option: Any, workerinput: dict[str, Any] | None, *, profile: str | None,
           seed: str | None, database: str | None, campaign: bool = False) -> HypothesisChoice:
    """The ci profile unless another is chosen; a seed always (given, or drawn
    here on the controller and handed to xdist workers through workerinput), so
    that every fuzz finding's reproduce line names the seed that replays it.

    The choice is taken out of pytest's options (`option`): hypothesis' plugin
    would import hypothesis to apply it at configure time; `lazily` applies it
    instead.  `profile` and `seed` are sockconf's own options (`sockconf check`
    runs pytest without hypothesis' plugin); hypothesis' options count too."""
    profile = profile or getattr(option, "hypothesis_profile", None) or "ci"
    seed = seed or getattr(option, "hypothesis_seed", None)
    if not seed and workerinput is not None:
        seed = workerinput.get("sockconf_hypothesis_seed")
    if not seed:
        seed = str(random.SystemRandom().randrange(1, 2**32))
    for name in ("hypothesis_profile", "hypothesis_seed"):
        if hasattr(option, name):
            setattr(option, name, None)
    return HypothesisChoice(profile, str(seed), database, campaign)


def lazily(choice: HypothesisChoice) -> None:
    """Apply `choice` now if hypothesis is imported already, else the moment it is."""
    if "hypothesis" in sys.modules:
        choice.apply()
        return
    sys.meta_path.insert(0, _AfterImport("hypothesis", choice.apply))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then()` right after module `name` has been executed by its first
    import (and removes itself)."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, then = spec.loader, self.then

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                loader.exec_module(module)
                then()

            def __getattr__(self, name: str) -> Any:  # resource readers and the like
                return getattr(loader, name)

        spec.loader = _Then()
        return spec


def database_dir(artifacts: str | None) -> str | None:
    """Where a campaign keeps hypothesis' example database: under its artifacts dir."""
    return str(Path(artifacts) / "hypothesis-db") if artifacts else None
