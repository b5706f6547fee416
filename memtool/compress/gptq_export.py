"""``memtool convert ARTIFACT --to gptq``: uniform (affine) artifacts -> the GPTQ checkpoint format.

GPTQ tensors of a linear layer ``W [N = out, K = in]`` with ``b`` bits and group size ``g``:

* ``qweight`` int32 ``[K * b / 32, N]``: the codes of each column (output n) packed along K as one little-endian
  bit stream: code k occupies bits ``[k*b, k*b + b)`` of the stream, word i holds stream bits ``[32i, 32i+32)``.
  For b = 2, 4, 8 no code straddles two words; for b = 3 every 32 codes fill 3 words and codes 10 and 21 straddle
  a word boundary (AutoGPTQ's layout).
* ``qzeros`` int32 ``[K / g, N * b / 32]``: the integer zero points packed the same way along N. Checkpoint format
  ``gptq`` (v1, what transformers/optimum/vLLM read) stores ``zero - 1`` (kernels add 1 back); ``gptq_v2`` stores
  ``zero``.
* ``scales`` fp16 ``[K / g, N]``, ``g_idx`` int32 ``[K]`` = ``k // g`` (``desc_act: false``).

Dequantization: ``w[n, k] = scales[g_idx[k], n] * (code[k, n] - zero[g_idx[k], n])``.

Exactness: memtool's affine layer stores ``scale`` (fp16) and ``bias = fp16(-scale * zero)``. The converter
recovers ``zero = round(-bias / scale)`` and accepts a group only if the stored bias is exactly
``fp16(-scale * zero)`` with an integer ``zero`` in ``[0, 2^b - 1]`` (what memtool's uniform quantizer writes);
otherwise it refuses. Codes, fp16 scales and integer zeros are carried over unchanged, so the GPTQ weight
``scale * (code - zero)`` is the quantizer's exact value; the artifact's own ``scale * code + bias`` differs from
it only by the fp16 rounding of the stored bias (at most half an ulp of ``bias``).

Refused (one-line UsageError): non-affine layers (BCQ, NF), layers whose settings differ (a plain GPTQ config has
one bits/group size), ``K % g != 0`` (GPTQ has no ragged last group), ``K % 32 != 0`` or ``N % 32 != 0`` (word
packing), non-integer zeros, and (v1 only) a group with zero point 0 whose codes use the top value (v1 cannot store
zero 0; when the top code is unused the codes are shifted by one, which is exact).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from memtool.compress import formats
from memtool.compress.formats import Format, PackedTensor
from memtool.errors import UsageError

GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")
GPTQ_BITS = (2, 3, 4, 8)


def pack_stream(v: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer values ``[R, C]`` (R*bits % 32 == 0) along dim 0 into int32 ``[R*bits/32, C]`` (bit stream)."""
    R, C = v.shape
    if (R * bits) % 32:
        raise UsageError(f"cannot pack {R} {bits}-bit values into whole 32-bit words")
    per = 32  # 32 values always fill exactly `bits` words
    if R % per:
        # b in {2,4,8}: 32/b values per word suffice; pad to a multiple of 32 values and cut after packing
        pad = per - R % per
        v = torch.cat([v, torch.zeros(pad, C, dtype=v.dtype, device=v.device)])
    v = v.to(torch.int64)
    blocks = v.view(-1, per, C)  # [B, 32, C]
    words = torch.zeros(blocks.shape[0], bits, C, dtype=torch.int64, device=v.device)
    mask = (1 << bits) - 1
    for j in range(per):
        pos = j * bits
        w, b = divmod(pos, 32)
        x = blocks[:, j] & mask
        words[:, w] |= (x << b) & 0xFFFFFFFF
        if b + bits > 32:
            words[:, w + 1] |= x >> (32 - b)
    words = words.reshape(-1, C)[: R * bits // 32]
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous()


def unpack_stream(words: torch.Tensor, bits: int, R: int) -> torch.Tensor:
    """Inverse of :func:`pack_stream`: int32 ``[R*bits/32, C]`` -> int64 ``[R, C]``."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    C = w.shape[1]
    nw = w.shape[0]
    full = -(-R // 32) * bits
    if nw < full:
        w = torch.cat([w, torch.zeros(full - nw, C, dtype=w.dtype, device=w.device)])
    blocks = w.view(-1, bits, C)
    out = torch.zeros(blocks.shape[0], 32, C, dtype=torch.int64, device=w.device)
    mask = (1 << bits) - 1
    for j in range(32):
        pos = j * bits
        i, b = divmod(pos, 32)
        x = blocks[:, i] >> b
        if b + bits > 32:
            x = x | (blocks[:, i + 1] << (32 - b))
        out[:, j] = x & mask
    return out.view(-1, C)[:R]


def affine_integer_zeros(lw, name: str = "layer") -> torch.Tensor:
    """Integer zero points ``[N, G]`` of an affine LutWeight, or a UsageError if the bias is not ``-scale*zero``."""
    if lw.kind != "affine":
        raise UsageError(f"{name}: only uniform (affine) layers convert to GPTQ, not {lw.kind}")
    s = lw.scales.to(torch.float32)
    b = lw.biases.to(torch.float32)
    if bool((s == 0).any()):
        raise UsageError(f"{name}: a group has scale 0; GPTQ cannot represent it")
    z = torch.round(-b / s)
    rebuilt = (-(s * z)).to(torch.float16)
    if not torch.equal(rebuilt.view(torch.int16), lw.biases.to(torch.float16).view(torch.int16)):
        raise UsageError(f"{name}: zero points are not integers (bias != -scale*zero); GPTQ conversion would be lossy")
    maxq = (1 << lw.bits) - 1
    if bool((z < 0).any()) or bool((z > maxq).any()):
        raise UsageError(f"{name}: zero points outside [0, {maxq}]; GPTQ cannot store them")
    return z.to(torch.int64)


def to_gptq(lw, name: str = "layer", checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """GPTQ tensors (unprefixed) of an affine :class:`LutWeight`; see the module docstring for what is refused."""
    if lw.bits not in GPTQ_BITS:
        raise UsageError(f"{name}: GPTQ supports {GPTQ_BITS} bits, not {lw.bits}")
    N, K, g = lw.out_features, lw.in_features, lw.group_size
    if K % g:
        raise UsageError(f"{name}: in_features {K} is not a multiple of the group size {g}; GPTQ has no ragged "
                         "last group (quantize with a group size that divides it, or -1)")
    if K % 32 or N % 32:
        raise UsageError(f"{name}: GPTQ packing needs in/out features divisible by 32, got {K}/{N}")
    zeros = affine_integer_zeros(lw, name)  # [N, G]
    codes = lw.to_codes().to(torch.int64)  # [N, K]
    maxq = (1 << lw.bits) - 1
    if checkpoint_format == "gptq":  # v1 stores zero-1: a zero of 0 needs the codes shifted up by one
        zg = zeros == 0
        if bool(zg.any()):
            cz = zg.repeat_interleave(g, dim=1)[:, :K]
            if bool((codes[cz] == maxq).any()):
                raise UsageError(f"{name}: a group has zero point 0 and uses the top code; the GPTQ v1 format "
                                 "cannot store it (use --gptq-format gptq_v2)")
            codes = torch.where(cz, codes + 1, codes)
            zeros = torch.where(zg, torch.ones_like(zeros), zeros)
        stored_zeros = zeros - 1
    elif checkpoint_format == "gptq_v2":
        stored_zeros = zeros
    else:
        raise UsageError(f"unknown GPTQ checkpoint format {checkpoint_format!r}: expected gptq or gptq_v2")
    qweight = pack_stream(codes.T.contiguous(), lw.bits)  # [K*b/32, N]
    qzeros = pack_stream((stored_zeros & maxq).contiguous(), lw.bits).T.contiguous()  # [G, N*b/32]
    scales = lw.scales.to(torch.float16).T.contiguous()  # [G, N]
    g_idx = (torch.arange(K) // g).to(torch.int32)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}


def gptq_dequantize(t: dict[str, torch.Tensor], bits: int, in_features: int,
                    checkpoint_format: str = "gptq") -> torch.Tensor:
    """``[N, K]`` float32 weight from GPTQ tensors (vectorized; the tests use an explicit-loop reference)."""
    K = in_features
    codes = unpack_stream(t["qweight"], bits, K)  # [K, N]
    N = codes.shape[1]
    G = t["scales"].shape[0]
    z = unpack_stream(t["qzeros"].T.contiguous(), bits, N).T  # [G, N]
    if checkpoint_format == "gptq":
        z = z + 1
    gi = t["g_idx"].to(torch.int64)
    s = t["scales"].to(torch.float32)
    assert s.shape[0] == G
    w = s[gi] * (codes - z[gi]).to(torch.float32)  # [K, N]
    return w.T.contiguous()


class GptqFormat(Format):
    """The GPTQ checkpoint tensors of one linear layer (write-only here: memtool loads GPTQ through others)."""

    name = "gptq"
    version = 1

    def tensor_suffixes(self, meta: dict) -> tuple[str, ...]:
        return GPTQ_TENSORS

    def pack(self, module: str, obj: Any, **kw: Any) -> PackedTensor:
        cf = kw.get("checkpoint_format", "gptq")
        t = to_gptq(obj, module, cf)
        meta = {"format": self.name, "bits": obj.bits, "group_size": -1 if obj.groups == 1 else obj.group_size,
                "checkpoint_format": cf}
        return PackedTensor(self.name, module, {f"{module}.{k}": v for k, v in t.items()}, meta,
                            (obj.out_features, obj.in_features))

    def unpack(self, packed: PackedTensor) -> dict[str, torch.Tensor]:
        return {k[len(packed.module) + 1:]: v for k, v in packed.tensors.items()}

    def dequantize(self, packed: PackedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return gptq_dequantize(self.unpack(packed), packed.meta["bits"], packed.shape[1],
                               packed.meta.get("checkpoint_format", "gptq")).to(dtype)

    def describe(self, meta: dict) -> str:
        g = meta.get("group_size")
        return f"gptq {meta.get('bits')}b g{'ch' if g == -1 else g}"


formats.register(GptqFormat())


def convert_to_gptq(artifact: str | Path, out: str | Path, *, overwrite: bool = False,
                    checkpoint_format: str = "gptq", progress=None, command: list[str] | None = None) -> dict:
    """Write a GPTQ checkpoint directory from a uniform memtool artifact (atomically, like every artifact)."""
    import sys

    from memtool.compress.artifact import ArtifactWriter, read_artifact, sha256_files, totals
    from memtool.progress import Progress

    progress = progress or Progress()
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise UsageError(f"unknown GPTQ checkpoint format {checkpoint_format!r}: expected gptq or gptq_v2")
    ArtifactWriter.check_target(out, overwrite)
    t0 = time.perf_counter()
    art = read_artifact(artifact)
    if Path(out).expanduser().resolve() == art.path.resolve():
        raise UsageError(f"the output {out} is the input artifact: write the GPTQ checkpoint elsewhere")
    packed_mods = art.packed_modules()
    if not packed_mods:
        raise UsageError(f"{artifact} has no quantized layers")
    settings = set()
    for name, meta in packed_mods.items():
        if meta.get("format") != "lut" or meta.get("kind") != "affine":
            what = meta.get("method", meta.get("kind", meta.get("format")))
            raise UsageError(f"layer {name} is {what}; only uniform artifacts convert losslessly to GPTQ")
        N, K = art.layer_shape(name)
        g = meta["group_size"]
        if g != -1 and g < K and K % g:
            raise UsageError(f"layer {name}: in_features {K} is not a multiple of the group size {g}; GPTQ has no "
                             "ragged last group (quantize with a group size that divides it, or -1)")
        settings.add((meta["bits"], -1 if g == -1 or g >= K else g))
    if len(settings) > 1:
        raise UsageError(f"layers use different settings {sorted(settings)}; a GPTQ config has one bits/group size")
    bits, group_size = settings.pop()
    # dense linear layers inside the decoder blocks would be expected packed by GPTQ loaders
    dense_linears = [m for m in art.qconfig.get("modules_to_not_convert", []) if "lm_head" not in m]
    lut, gptq = formats.get("lut"), formats.get("gptq")
    with ArtifactWriter(out, overwrite=overwrite, progress=progress) as w:
        with progress.task("convert to gptq", total=len(art.headers)) as task:
            for p in art.iter_packed():
                if p.module in packed_mods:
                    lw = lut.unpack(p)
                    t1 = time.perf_counter()
                    gp = gptq.pack(p.module, lw, checkpoint_format=checkpoint_format)
                    ref = lw.dequantize(torch.float32)
                    got = gptq.dequantize(gp)
                    gp.stats.update(max_abs_diff_vs_artifact=float((ref - got).abs().max()),
                                    seconds=round(time.perf_counter() - t1, 4), bytes_before=p.numel * 2)
                    w.add(gp)
                    progress.log(f"{p.module:<52} {str(list(p.shape)):>16} -> gptq {bits}b "
                                 f"(max |diff| {gp.stats['max_abs_diff_vs_artifact']:.2e})")
                else:
                    d = formats.get("dense").pack(p.module, p.tensors[p.module])
                    d.stats["bytes_before"] = d.numel * 2 if d.tensors[p.module].is_floating_point() else d.nbytes
                    w.add(d)
                task.advance(1, p.module)
        from memtool import __version__

        qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": False,
              "static_groups": False, "true_sequential": True, "damp_percent": 0.01,
              "checkpoint_format": checkpoint_format, "modules_to_not_convert": dense_linears or None,
              "meta": {"quantizer": [f"memtool:{__version__}"], "source": "memtool convert --to gptq"}}
        config = {k: v for k, v in art.config.items() if k != "quantization_config"}
        config["quantization_config"] = {k: v for k, v in qc.items() if v is not None}
        manifest = {"command": command if command is not None else list(sys.argv),
                    "source": {"artifact": str(art.path), "files": [s.name for s in art.shard_files()],
                               "sha256": sha256_files(art.shard_files()),
                               "source_model": art.manifest.get("source")},
                    "conversion": {"to": checkpoint_format, "bits": bits, "group_size": group_size},
                    "timings": {"total_s": round(time.perf_counter() - t0, 3)}}
        w.finish(config, {}, manifest, copy_from=art.path, raw_quantization_config=True)
        tot = totals(w.layers)
    diffs = [r["max_abs_diff_vs_artifact"] for r in w.layers if "max_abs_diff_vs_artifact" in r]
    return {"out": str(Path(out).expanduser().absolute()), "bits": bits, "group_size": group_size,
            "checkpoint_format": checkpoint_format, "layers": len(diffs),
            "max_abs_diff_vs_artifact": max(diffs) if diffs else 0.0, "bytes_after": tot["bytes_after"],
            "seconds": round(time.perf_counter() - t0, 2)}


__all__ = ["to_gptq", "gptq_dequantize", "pack_stream", "unpack_stream", "convert_to_gptq", "GptqFormat",
           "affine_integer_zeros"]
