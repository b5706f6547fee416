"""Calibrated rounding: GPTQ error feedback for every table type, against RTN on correlated inputs."""

import pytest
import torch

from memtool.compress.gptq import GptqConfig, gptq_quantize, output_error
from memtool.compress.lut import LutConfig, quantize_weight
from memtool.errors import UsageError


def correlated_inputs(n, K, gen):
    mix = torch.randn(K, K, generator=gen, dtype=torch.float64) / K**0.5 + 0.3 * torch.eye(K, dtype=torch.float64)
    scale = torch.exp(torch.randn(K, generator=gen, dtype=torch.float64))  # uneven channel magnitudes
    return (torch.randn(n, K, generator=gen, dtype=torch.float64) @ mix) * scale


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(7)
    K, N = 200, 48  # ragged: 200 = 3 x 64 + 8
    X = correlated_inputs(1024, K, gen)
    W = torch.randn(N, K, generator=gen, dtype=torch.float64) * 0.1
    return W, X, X.T @ X


@pytest.mark.parametrize("method", ["uniform", "bcq", "nf"])
@pytest.mark.parametrize("gcfg", [GptqConfig(act_order=False, clip_steps=None), GptqConfig(block_size=32),
                                  GptqConfig(static_groups=True, block_size=48, clip_steps=0)],
                         ids=["plain", "act_order_clip", "act_static"])
def test_gptq_beats_rtn(layer, method, gcfg):
    W, X, H = layer
    cfg = LutConfig(3, 64, method, bcq_iters=4)
    rtn = quantize_weight(W, cfg, torch.float64)
    q = gptq_quantize(W, H, cfg, gcfg, compute_dtype=torch.float64)
    assert q.codes.shape == W.shape and q.codes.dtype == torch.uint8 and q.n_groups == 4
    e_rtn = torch.linalg.norm(X @ W.T - X @ rtn.dequantize().T).item()
    e_q = torch.linalg.norm(X @ W.T - X @ q.dequantize().T).item()
    assert e_q < 0.8 * e_rtn, (e_q, e_rtn)
    assert output_error(W, q.dequantize(), H) == pytest.approx(e_q**2, rel=1e-6)


def test_gptq_codes_are_nearest_of_updated_weights():
    """With H = I and no dampening there is no error feedback, so GPTQ (without refit) reduces to round-to-nearest."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(16, 96, generator=gen, dtype=torch.float64)
    H = torch.eye(96, dtype=torch.float64)
    for method in ["uniform", "nf"]:
        cfg = LutConfig(4, 32, method)
        for clip in (0, 12):
            q = gptq_quantize(W, H, cfg, GptqConfig(damp=0.0, clip_steps=clip, refit=None), compute_dtype=torch.float64)
            r = quantize_weight(W, LutConfig(4, 32, method, clip_steps=clip), torch.float64)
            torch.testing.assert_close(q.dequantize(), r.dequantize())
        q = gptq_quantize(W, H, cfg, GptqConfig(damp=0.0, act_order=False, clip_steps=None, refit=None),
                          compute_dtype=torch.float64)
        r = quantize_weight(W, cfg, torch.float64)
        torch.testing.assert_close(q.dequantize(), r.dequantize())


def test_gptq_block_size_invariance(layer):
    W, X, H = layer
    cfg = LutConfig(4, 32, "uniform")
    a = gptq_quantize(W, H, cfg, GptqConfig(block_size=128), compute_dtype=torch.float64)
    b = gptq_quantize(W, H, cfg, GptqConfig(block_size=7), compute_dtype=torch.float64)
    # lazy batch updates are exact: the same result up to rounding ties
    assert (a.codes != b.codes).float().mean() < 0.01
    torch.testing.assert_close(a.scale, b.scale, rtol=1e-6, atol=1e-9)


def test_gptq_per_channel_and_dead_columns():
    gen = torch.Generator().manual_seed(5)
    X = correlated_inputs(512, 64, gen)
    X[:, 3] = 0  # a dead input channel
    W = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    q = gptq_quantize(W, X.T @ X, LutConfig(4, -1, "bcq"), compute_dtype=torch.float64)
    assert q.alpha.shape == (8, 1, 4)
    rtn = quantize_weight(W, LutConfig(4, -1, "bcq"), torch.float64)
    assert torch.linalg.norm(X @ (W - q.dequantize()).T) < torch.linalg.norm(X @ (W - rtn.dequantize()).T)


def test_gptq_bad_inputs():
    with pytest.raises(UsageError, match="Hessian shape"):
        gptq_quantize(torch.randn(4, 8), torch.eye(9), LutConfig(4, 32))
    with pytest.raises(UsageError, match="damp"):
        GptqConfig(damp=-1)


def test_awq_search_helps_with_outlier_channels():
    from memtool.compress.gptq import awq_search

    gen = torch.Generator().manual_seed(11)
    K = 128
    X = torch.randn(2048, K, generator=gen)
    X[:, :4] *= 30  # a few outlier input channels, as in LLM activations
    H = X.T @ X
    W = torch.randn(32, K, generator=gen)
    cfg = LutConfig(3, 64, "uniform")
    s, a = awq_search([W], H, cfg)
    assert a > 0 and s.shape == (K,) and s[:4].min() > s[4:].max()
    e0 = output_error(W, quantize_weight(W, cfg).dequantize(), H)
    e1 = output_error(W, quantize_weight(W * s, cfg).dequantize() / s, H)
    assert e1 < 0.9 * e0


def test_awq_fold_preserves_the_block():
    from memtool.compress.gptq import AWQ_PAIRS, _apply_awq
    from memtool.models.tiny import tiny_model

    model = tiny_model("llama", seed=4)
    block = model.model.layers[0]
    gen = torch.Generator().manual_seed(0)
    hess = {}
    for prod, cons in AWQ_PAIRS:
        K = block.get_submodule(cons[0]).in_features
        X = torch.randn(256, K, generator=gen) * torch.exp(2 * torch.randn(K, generator=gen))
        for c in cons:
            hess[c] = X.T @ X
    before = {c: h.clone() for c, h in hess.items()}
    ids = torch.randint(0, 256, (2, 16), generator=gen)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert _apply_awq(block, hess, LutConfig(3, 32), lambda name: False) == 3
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # scales folded exactly
    assert not torch.equal(hess["mlp.down_proj"], before["mlp.down_proj"])


@pytest.mark.parametrize("mode", ["affine", "scale"])
def test_refit_is_the_least_squares_solution(layer, mode):
    """The refit equals the float64 closed form per row, (A^T H A)^-1 A^T H w with A the row's code basis."""
    from memtool.compress.gptq import refit_uniform

    W, X, H = layer
    cfg = LutConfig(3, 64, "uniform")  # K = 200: groups of 64, 64, 64, 8
    q = gptq_quantize(W, H, cfg, GptqConfig(refit=None, clip_weighted=False), compute_dtype=torch.float64)
    s, z = refit_uniform(W, q.codes.long(), q.scale, q.zero, H, 64, mode)
    N, K = W.shape
    gid = torch.arange(K) // 64
    onehot = torch.nn.functional.one_hot(gid, 4).double()  # [K, G]
    c = q.codes.double()
    for n in range(N):
        if mode == "affine":
            A = torch.cat([c[n, :, None] * onehot, onehot], 1)  # columns: s_1..s_G, b_1..b_G
        else:
            A = (c[n, :, None] - q.zero[n, gid, None]) * onehot
        theta = torch.linalg.solve(A.T @ H @ A, A.T @ H @ W[n])
        torch.testing.assert_close(s[n], theta[:4], rtol=1e-5, atol=1e-7)
        if mode == "affine":
            torch.testing.assert_close(-s[n] * z[n], theta[4:], rtol=1e-5, atol=1e-7)
    if mode == "scale":
        assert torch.equal(z, q.zero)  # integer zero points kept (GPTQ-exportable)
    refit = quantize_weight(W, cfg, torch.float64)  # same layout, then the refit parameters and GPTQ's codes
    refit.codes, refit.scale, refit.zero = q.codes, s, z
    wq0, wq1 = q.dequantize(), refit.dequantize()
    e0 = (((W - wq0) @ H) * (W - wq0)).sum(1)
    e1 = (((W - wq1) @ H) * (W - wq1)).sum(1)
    assert (e1 <= e0 * (1 + 1e-12)).all() and e1.sum() < 0.97 * e0.sum()
    q2 = gptq_quantize(W, H, cfg, GptqConfig(refit=mode, damp=0.0), compute_dtype=torch.float64)
    assert output_error(W, q2.dequantize(), H) < output_error(W, gptq_quantize(
        W, H, cfg, GptqConfig(damp=0.0, refit=None), compute_dtype=torch.float64).dequantize(), H)


def test_refit_keeps_degenerate_groups():
    """A group with one distinct code (or a row that would need a negative scale) keeps finite parameters."""
    from memtool.compress.gptq import refit_uniform

    gen = torch.Generator().manual_seed(1)
    W = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    W[0, :32] = 0.5  # constant group: every code equal
    X = torch.randn(256, 64, generator=gen, dtype=torch.float64)
    q = quantize_weight(W, LutConfig(4, 32), torch.float64)
    s, z = refit_uniform(W, q.codes.long(), q.scale, q.zero, X.T @ X, 32, "affine")
    assert s.isfinite().all() and z.isfinite().all() and (s > 0).all()


def test_weighted_clip_fit():
    from memtool.compress.lut import fit_group_params, params_to_lut
    from memtool.compress.lut_common import nearest_codes

    def weighted_clip_fit(x, d, cfg):
        return fit_group_params(x[:, None], None, cfg, weight=d)[0]

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 64, generator=gen, dtype=torch.float64) * torch.exp(torch.randn(64, generator=gen))
    cfg = LutConfig(3, 64, "uniform", clip_steps=16)
    ref, _ = fit_group_params(x[:, None], None, cfg)  # unweighted clip search
    p = weighted_clip_fit(x, torch.ones(64, dtype=torch.float64), cfg)
    torch.testing.assert_close(p["scale"], ref["scale"])
    torch.testing.assert_close(p["zero"], ref["zero"])
    d = torch.exp(2 * torch.randn(64, generator=gen, dtype=torch.float64))

    def werr(pp):
        lut = params_to_lut("uniform", pp, 3)
        return ((lut.gather(-1, nearest_codes(x[:, None], lut)) - x[:, None]) ** 2 * d).sum(-1)

    pw = weighted_clip_fit(x, d, cfg)
    assert (werr(pw) <= werr(ref) + 1e-12).all() and werr(pw).sum() < werr(ref).sum()
    # brute force: the best of the 16 shrunken min/max fits, per row, by the weighted error
    best = torch.stack([werr(fit_group_params(x[:, None] * (1 - 0.025 * j), None, LutConfig(3, 64))[0])
                        for j in range(16)]).amin(0)
    torch.testing.assert_close(werr(pw), best)


def test_weighted_clip_lowers_the_output_error(layer):
    W, X, H = layer  # uneven input channel magnitudes
    cfg = LutConfig(3, 64, "uniform")
    gc = {cw: GptqConfig(clip_weighted=cw, refit=None) for cw in (False, True)}
    e = {cw: output_error(W, gptq_quantize(W, H, cfg, gc[cw], torch.float64).dequantize(), H)
         for cw in (False, True)}
    assert GptqConfig().clip_weighted and GptqConfig().refit == "scale" and e[True] < 0.9 * e[False], e
