"""The policy core (``node/core``, ``balancer/core``) needs only the standard library.

Every module in the two core packages is imported in a fresh interpreter in which
importing anything else (vLLM, Ray, torch, NumPy, pydantic, the hosts' own
packages) raises, and a plan is made; a host redefining a core formula is caught
by the ``duplicates`` check, not here.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ("node.core", "balancer.core")

PROBE = """
import importlib, pkgutil, sys

ALLOWED = set(sys.stdlib_module_names) | {"node", "balancer"}
CORE = ("node.core", "balancer.core")


class OnlyTheStandardLibrary:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ALLOWED:
            raise ImportError(f"{name} is not the standard library")
        if top in ("node", "balancer") and "." in name and not name.startswith(CORE) \\
                and name not in ("node", "balancer"):
            raise ImportError(f"{name} is a host module, not the core")
        return None


sys.meta_path.insert(0, OnlyTheStandardLibrary())
imported = []
for package in CORE:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        imported.append(importlib.import_module(f"{package}.{info.name}").__name__)

from node.core.plan import Limits
from node.core.policies import make_policy
from node.core.request import SLO, RequestState
from node.core.step_time import StepTimeModel

plan = make_policy('fairbatching', StepTimeModel(0.005, 2e-5, 0.0)).plan(
    [RequestState('r', 0.0, 10, SLO(1.0, 0.05))], Limits(), 0.1)
assert plan.prefill_chunks == {'r': 10}, plan
print("imported", " ".join(sorted(imported)))
"""


def test_every_core_module_imports_and_plans_with_only_the_standard_library():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split()[1:])
    on_disk = {f"{pkg}.{p.stem}" for pkg in CORE_PACKAGES
               for p in (ROOT / pkg.replace(".", "/")).glob("*.py") if p.stem != "__init__"}
    assert on_disk and imported == on_disk
