"""Launch one fast-GEMV configuration a few times (for ``ncu``): python scripts/ncu_gemv.py N K BITS BN BU NW ST SPLIT"""

import os
import sys

import torch

sys.path.insert(0, os.getcwd())
from memtool.kernels import lut_gemv as LG  # noqa: E402
from scripts.gpu_lut_bench import rand_weight  # noqa: E402

n, k, bits, bn, bu, nw, st, split = (int(v) for v in sys.argv[1:9])
w = rand_weight("affine", bits, n, k, 128, torch.device("cuda"), seed=bits)
x = torch.randn(1, k, device="cuda", dtype=torch.float16)
for _ in range(3):
    LG.launch_affine(x, w, bn, bu, split, nw, st)
torch.cuda.synchronize()
