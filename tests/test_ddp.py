import os
import subprocess
import sys
from pathlib import Path

import torch

from charlm import batch_fn, char_model
from nexttoken.training import LoopConfig, OptimConfig, fit

HERE = Path(__file__).parent


def test_two_gloo_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_params = torch.load(out)

    model = char_model()
    fit(model, batch_fn(32, 8), OptimConfig(lr=1e-2, warmup_steps=1), LoopConfig(steps=4, batch_size=8, eval_every=4,
        ckpt_every=4))
    for p, q in zip(model.parameters(), ddp_params):
        assert torch.allclose(p, q, atol=1e-5)
