"""GPU check of `memtool generate --cuda-graph` (CI has no GPU): on a tiny random Llama and its packed 4-bit
artifact, in fp16 on CUDA, the CUDA-graph decode must give the same greedy text as transformers' generate, and
sampling must run; prints the decode mode, tokens and tokens/s of each call.

    export PYTHONPATH=$PWD; python scripts/gpu_generate_check.py
"""

import json
import sys
import tempfile

from typer.testing import CliRunner

from memtool.cli.app import app
from memtool.compress.quantize import QuantizeSpec, quantize_model
from memtool.models.tiny import save_tiny_model


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
    bad = 0
    for a in (False, True):
        g, e = res[(a, "--cuda-graph", False)], res[(a, "--no-cuda-graph", False)]
        same = g["text"] == e["text"] and g["decode"] == "cuda-graph"
        bad += not same
        print("artifact" if a else "plain", "greedy: CUDA graph = transformers:", same)
    return bad


if __name__ == "__main__":
    sys.exit(main())
