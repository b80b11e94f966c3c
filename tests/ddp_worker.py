"""Run under torchrun by test_ddp.py: train the char model with DDP (gloo) and save the weights from rank 0."""

import sys

import torch

from charlm import batch_fn, char_model
from nexttoken.distributed import init_distributed, shutdown_distributed
from nexttoken.training import LoopConfig, OptimConfig, fit

out = sys.argv[1]
dist = init_distributed("cpu")
model = char_model()
fit(model, batch_fn(32, 8), OptimConfig(lr=1e-2, warmup_steps=1), LoopConfig(steps=4, batch_size=8, grad_accum=2,
    eval_every=4, ckpt_every=4), dist=dist)
if dist.is_main:
    torch.save([p.detach() for p in model.parameters()], out)
shutdown_distributed()
