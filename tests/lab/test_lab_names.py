"""The lab names of parallel test workers, and the order of the modules (no lab booted here).

Under pytest-xdist every worker boots its own labs: its lab names must differ from every other
worker's and from a serial run's beside it, and stay valid lab ids (1-8 letters or digits).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from conftest import (LAB_DIR, LAB_NUMBERS, LAB_PREFIX, MODULE_SECONDS, check_prefix, lab_name,
                      module_order_key, worker_prefix)

from mailfleet.lab.paths import LAB_ID_RE, LabPaths

SUFFIXES = [*range(1, LAB_NUMBERS + 1), "demo"]


def names(prefix: str) -> set[str]:
    return {f"{prefix}{suffix}"[:8] for suffix in SUFFIXES}


def test_each_worker_adds_its_own_letter():
    assert worker_prefix("mft", None) == worker_prefix("mft", "") == "mft"
    assert worker_prefix("mft", "gw0") == "mfta"
    assert worker_prefix("mft", "gw1") == "mftb"
    assert worker_prefix("x", "gw25") == "xz"
    for bad in ("gw26", "master", "gw", "gwx"):
        with pytest.raises(ValueError):
            worker_prefix("mft", bad)


@pytest.mark.parametrize("base", ["mft", "x", "sp", "abcde"])
def test_no_two_workers_nor_a_serial_run_share_a_lab_or_its_namespaces(base):
    prefixes = [base] + [worker_prefix(base, f"gw{i}") for i in range(4)]
    for prefix in prefixes:
        assert check_prefix(prefix) == prefix
        assert all(LAB_ID_RE.fullmatch(name) for name in names(prefix)), names(prefix)
    for one, other in itertools.combinations(prefixes, 2):
        assert not names(one) & names(other), (one, other)
        # what cleanup finds a lab's leftovers by: its namespaces' prefix and its directory
        for a, b in itertools.product(names(one), names(other)):
            assert not LabPaths(a).netns_prefix.startswith(LabPaths(b).netns_prefix)
            assert not str(LabPaths(a).state_dir).startswith(f"{LabPaths(b).state_dir}/")


def test_a_prefix_too_long_for_the_longest_lab_name_is_refused():
    assert check_prefix("abcdef") == "abcdef"  # abcdef10: 8 characters
    for bad in ("abcdefg", "Mft", "m-t", ""):
        with pytest.raises(ValueError):
            check_prefix(bad)
    with pytest.raises(ValueError):
        check_prefix(worker_prefix("abcdef", "gw0"))


def test_this_process_names_its_labs_from_its_own_prefix():
    base = os.environ.get("MAILFLEET_TEST_LABS", "mft")
    assert LAB_PREFIX == worker_prefix(base, os.environ.get("PYTEST_XDIST_WORKER"))
    assert lab_name(1) == f"{LAB_PREFIX}1" and lab_name(LAB_NUMBERS) == f"{LAB_PREFIX}{LAB_NUMBERS}"
    assert lab_name("demo").startswith(LAB_PREFIX) and len(lab_name("demo")) <= 8
    with pytest.raises(ValueError):
        lab_name(LAB_NUMBERS + 1)


def test_every_lab_module_has_its_place_and_test_lab_deploy_starts_first():
    modules = sorted(p.name for p in LAB_DIR.glob("test_*.py"))
    assert sorted(MODULE_SECONDS) == modules, "add the new module (its seconds) to MODULE_SECONDS"
    order = sorted(modules, key=lambda name: module_order_key(LAB_DIR / name))
    assert order == list(MODULE_SECONDS) and order[0] == "test_lab_deploy.py"
    assert module_order_key(LAB_DIR / "test_new.py") > module_order_key(LAB_DIR / order[-1])
    unit = Path(__file__).resolve().parents[1] / "unit" / "test_layers.py"
    assert module_order_key(unit) > module_order_key(LAB_DIR / "test_new.py")
