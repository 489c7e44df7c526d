"""The policy core must import and run with neither vLLM nor Ray installed."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('vllm', 'ray', 'torch'):
            raise ImportError(f'{name} is blocked in this test')
        return None
sys.meta_path.insert(0, Blocker())
import node.core.request, node.core.envelope, node.fit.step_time_fit, node.fit.profile, node.core.plan
import node.core.fairbatching, node.core.baselines, node.core.policies, node.core.pab
from node.core.policies import make_policy
from node.core.step_time import StepTimeModel
from node.core.plan import Limits
from node.core.request import SLO, RequestState
plan = make_policy('fairbatching', StepTimeModel(0.005, 2e-5, 0.0)).plan(
    [RequestState('r', 0.0, 10, SLO(1.0, 0.05))], Limits(), 0.1)
assert plan.prefill_chunks == {'r': 10}, plan
print('core ok')
"""


def test_policy_core_imports_and_plans_without_vllm_ray_or_torch():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "core ok" in result.stdout
