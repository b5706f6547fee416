"""Launch one wgmma-kernel configuration a few times (for ``ncu``):

    python scripts/ncu_wgmma.py N K M BITS BM BN NW SPLIT [STAGES [MAXNREG]]
    ncu -k regex:_raw_kernel -c 1 --section SpeedOfLight --section WarpStateStats ... python scripts/ncu_wgmma.py ...
"""

import os
import sys

import torch

sys.path.insert(0, os.getcwd())
from memtool.kernels import lut_wgmma as WG  # noqa: E402
from scripts.gpu_lut_bench import rand_weight  # noqa: E402

n, k, m, bits, bm, bn, nw, split = (int(v) for v in sys.argv[1:9])
stages = int(sys.argv[9]) if len(sys.argv) > 9 else 3
maxnreg = int(sys.argv[10]) if len(sys.argv) > 10 else 0
w = rand_weight("affine", bits, n, k, 128, torch.device("cuda"), seed=bits)
x = torch.randn(m, k, device="cuda", dtype=torch.float16)
for _ in range(3):
    WG.launch(x, w, bm, bn, split, nw, stages, maxnreg=maxnreg)
torch.cuda.synchronize()
