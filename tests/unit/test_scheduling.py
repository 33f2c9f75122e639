"""The run order and the profile map of check modules (conformance/scheduling.py,
plugin.PROFILE_MODULES): a module skipped for a profile must hold no check of
any of that profile's clauses, or those checks would silently never run."""

from __future__ import annotations

import importlib
import pkgutil
from types import SimpleNamespace

import conformance.checks as checks
from conformance import clauses
from conformance.plugin import PROFILE_MODULES
from conformance.scheduling import LONG_CHECKS, run_order


def _clauses_of(module_name: str) -> set[str]:
    module = importlib.import_module(f"conformance.checks.{module_name}")
    found = set()
    for obj in vars(module).values():
        for mark in getattr(obj, "pytestmark", []):
            if mark.name == "clause":
                found.add(mark.args[0])
    return found


def test_profile_modules_hold_only_their_profiles_clauses() -> None:
    for info in pkgutil.iter_modules(checks.__path__):
        if not info.name.startswith("test_"):
            continue
        owner = PROFILE_MODULES.get(f"{info.name}.py")
        if owner is None:
            continue
        ids = _clauses_of(info.name)
        assert ids, info.name
        for profile in ("hello", "echo", "jsondoc"):
            if profile == owner:
                continue
            other = {c.id for c in clauses.applicable(profile)}
            assert not ids & other, (info.name, profile, ids & other)


def test_long_checks_first_and_the_rest_in_order() -> None:
    def item(name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, originalname=name.split("[")[0])

    names = ["test_exact_greeting[tcp4]", "test_keepalive", "test_echo_fuzz[unix]",
             "test_sigterm[tcp4]", "test_client_keepalive"]
    ordered = [i.name for i in sorted(map(item, names), key=run_order)]
    assert ordered == ["test_echo_fuzz[unix]", "test_keepalive", "test_client_keepalive",
                       "test_exact_greeting[tcp4]", "test_sigterm[tcp4]"]
    assert run_order(item("test_exact_greeting")) == len(LONG_CHECKS)
