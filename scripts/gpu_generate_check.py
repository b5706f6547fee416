"""GPU check of `memtool generate --cuda-graph` (CI has no GPU): on a tiny random Llama and its packed 4-bit
artifact, in fp16 on CUDA, the CUDA-graph decode must give the same greedy text as transformers' generate, and
sampling must run; prints the decode mode, tokens and tokens/s of each call. Also the one-kernel RMSNorm and rotary
embedding (``--fast-ops``, on by default on CUDA): a Llama-2-7B-width model's logits with and without them, and the
greedy text of the tiny model without them.

    export PYTHONPATH=$PWD; python scripts/gpu_generate_check.py
"""

import json
import sys
import tempfile

from typer.testing import CliRunner

from memtool.cli.app import app
from memtool.compress.quantize import QuantizeSpec, quantize_model
from memtool.models.tiny import save_tiny_model


def check_norm_logits() -> int:
    """Logits of a 2-layer Llama of hidden size 4096 in fp16 with transformers' norms and rotary and with the
    one-kernel ones."""
    import torch

    from memtool.models.fast_ops import use_fast_ops
    from scripts.gpu_decode_bench import build

    m = build(2, torch.device("cuda"))
    ids = torch.randint(0, 32000, (2, 33), device="cuda")
    with torch.no_grad():
        want = m(ids).logits.float()
        ops = use_fast_ops(m)
        n = f"{len(ops.norms)} norms, rotary in {len(ops.rotary)} module(s)"
        got = m(ids).logits.float()
        ops.restore()
    err = ((got - want).norm() / want.norm()).item()
    print(f"fast ops ({n}) vs transformers' ops, fp16 logits: relative error {err:.2e}, "
          f"argmax agreement {(got.argmax(-1) == want.argmax(-1)).float().mean().item():.3f}")
    return int(not err < 2e-3)


def main() -> int:
    d = save_tiny_model(tempfile.mkdtemp() + "/l", "llama")
    art = tempfile.mkdtemp() + "/a"
    quantize_model(str(d), art, QuantizeSpec(bits=4, group_size=32))
    runner = CliRunner()
    res = {}
    for path in (str(d), art):
        for flag in ("--cuda-graph", "--no-cuda-graph"):
            for extra in ([], ["--temperature", "0.8", "--seed", "1"]):
                args = ["generate", path, "--prompt", "Hello there", "--max-new-tokens", "24", "--device", "cuda",
                        "--dtype", "float16", flag, "--json", "-q"] + extra  # fmt: skip
                o = runner.invoke(app, args)
                if o.exit_code != 0:
                    print(o.output)
                    return 1
                j = json.loads(o.stdout)
                res[(path == art, flag, bool(extra))] = j
                print(path == art, flag, extra, j["decode"], j["rows"][0]["new_tokens"], j["rows"][0]["tokens_per_s"],
                      repr(j["text"][:40]))  # fmt: skip
    for path in (str(d), art):
        args = ["generate", path, "--prompt", "Hello there", "--max-new-tokens", "24", "--device", "cuda",
                "--dtype", "float16", "--no-fast-ops", "--json", "-q"]  # fmt: skip
        o = runner.invoke(app, args)
        j = json.loads(o.stdout)
        print("artifact" if path == art else "plain", "greedy: fast ops = transformers' ops:",
              j["text"] == res[(path == art, "--cuda-graph", False)]["text"])  # fmt: skip
    bad = check_norm_logits()
    for a in (False, True):
        g, e = res[(a, "--cuda-graph", False)], res[(a, "--no-cuda-graph", False)]
        same = g["text"] == e["text"] and g["decode"] == "cuda-graph"
        bad += not same
        print("artifact" if a else "plain", "greedy: CUDA graph = transformers:", same)
    return bad


if __name__ == "__main__":
    sys.exit(main())
