"""Ring attention on 2 GPUs (torchrun, NCCL) against the one-GPU result and the float64
reference: tests/gpu/ring_check.py, run here as a subprocess. Skipped with fewer than
two GPUs. NVLink multicast stays off (the host's GPUs are shared)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ring_attention_on_two_gpus(tmp_path):
    report = tmp_path / "ring.json"
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                             "2", "-m", "tests.gpu.ring_check", "--json", str(report)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checks = json.loads(report.read_text())["checks"]
    assert checks and not [c for c in checks if c["failures"]], checks
