"""Positions inside attention (RoPE, ALiBi, none), sliding-window local attention, and the two
transformers architectures built on them (NomicBERT, ModernBERT).

- RoPE, ALiBi and the window mask against independent NumPy formulas from their papers / ModernBERT's
  definition (ALiBi has no transformers reference at all).
- NomicBERT and ModernBERT (transformers 5, PyTorch): load a `save_pretrained` directory of a tiny
  random model, compare hidden states, attentions, logits and the MLM loss with padding (fp32, 1e-5;
  ModernBERT with sequences longer than its local window), and export back so transformers loads it.
- Packed rows use their per-sequence position_ids; scanned and unrolled layers agree (local/global
  alternation included); kernels that cannot express a window fall back instead of attending globally.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import BertConfig
from bert_jax.modeling import build_model, init_params
from bert_jax.modeling import positions as pos_lib
from tests.test_architectures import (TINY, _assert_export_round_trips, _inputs, _max_diff, _ours, _reference)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ NumPy formulas
def _np_rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """RoFormer (Su et al.) eq. 34 in the rotate-half pairing: dims (i, i + D/2) form a 2-D vector
    rotated by angle m * theta^(-2i/D), m the token's position. x [B, L, N, D], positions [B, L]."""
    out = np.empty_like(x, dtype=np.float64)
    half = x.shape[-1] // 2
    for i in range(half):
        angle = positions[:, :, None].astype(np.float64) * theta ** (-2.0 * i / x.shape[-1])
        a, b = x[..., i].astype(np.float64), x[..., i + half].astype(np.float64)
        out[..., i] = a * np.cos(angle) - b * np.sin(angle)
        out[..., i + half] = a * np.sin(angle) + b * np.cos(angle)
    return out


def test_rope_matches_the_rotation_formula():
    rs = np.random.RandomState(0)
    x = rs.randn(2, 7, 3, 8).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 2, 3]])  # second row: two packed sequences
    got = np.asarray(pos_lib.apply_rotary(jnp.asarray(x), jnp.asarray(positions), 500.0))
    np.testing.assert_allclose(got, _np_rope(x, positions, 500.0), atol=2e-6)
    # Relative property: q.k after rotation depends only on the distance of the positions.
    q, k = rs.randn(1, 1, 1, 8).astype(np.float32), rs.randn(1, 1, 1, 8).astype(np.float32)
    dot = lambda m, n: float(np.sum(_np_rope(q, np.array([[m]]), 500.0) * _np_rope(k, np.array([[n]]), 500.0)))
    assert abs(dot(3, 1) - dot(12, 10)) < 1e-9 and abs(dot(3, 1) - dot(1, 3)) > 1e-3


# ------------------------------------------------------------------------------ NomicBERT
def _nomic_config(**kw):
    return transformers.NomicBertConfig(**{**TINY, "hidden_act": "silu"}, max_position_embeddings=64,
                                        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **kw)


@pytest.mark.parametrize("hf_class, our_class", [("NomicBertForMaskedLM", "BertForMaskedLM"),
                                                 ("NomicBertModel", "BertModel")])
def test_nomic_bert_matches_transformers_and_exports(hf_class, our_class, tmp_path):
    hf_config = _nomic_config()
    inputs = _inputs(hf_config.pad_token_id, "mlm" if our_class == "BertForMaskedLM" else "none")
    ref, ref_model = _reference(hf_class, hf_config, tmp_path / "hf", inputs)
    ours, config, params = _ours(tmp_path / "hf", our_class, inputs)
    assert (config.position_embedding_type, config.rope_theta, config.mlp_type) == ("rotary", 500.0, "swiglu")
    assert not config.attention_bias and not config.mlp_bias and config.norm_position == "post"
    worst = _max_diff(ours, ref)
    log.info("%s: max abs diff %.3g over %s", hf_class, worst, sorted(ref))
    _assert_export_round_trips(tmp_path, config, params, our_class, hf_class, ref_model)


def test_nomic_bert_export_refuses_what_it_cannot_represent(tmp_path):
    from bert_jax.hf import save_hf_checkpoint
    config = BertConfig(**{**TINY, "hidden_act": "silu"}, model_type="nomic_bert", position_embedding_type="alibi",
                        mlp_type="swiglu", attention_bias=False, mlp_bias=False)
    model = build_model("BertModel", config)
    with pytest.raises(ValueError, match="position_embedding_type='alibi'"):
        save_hf_checkpoint(tmp_path / "x", config, init_params(model), "BertModel")
    with pytest.raises(ValueError, match="norm_position"):
        config = config.replace(position_embedding_type="rotary", norm_position="pre")
        save_hf_checkpoint(tmp_path / "x", config, init_params(model), "BertModel")
    bert = BertConfig(**TINY, position_embedding_type="rotary")
    with pytest.raises(ValueError, match="position_embedding_type='rotary'"):
        save_hf_checkpoint(tmp_path / "y", bert, init_params(build_model("BertModel", bert)), "BertModel")


# ------------------------------------------------------------------------------ packing, none, scan
def _tiny(**kw) -> BertConfig:
    return BertConfig(**{**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                         "max_position_embeddings": 64, **kw})


@pytest.mark.parametrize("switches", [dict(position_embedding_type="rotary"),
                                      dict(position_embedding_type="alibi"),
                                      dict(position_embedding_type="rotary", local_attention_window=4,
                                           global_attn_every_n_layers=2)])
def test_packed_rows_equal_separate_rows(switches):
    """Two sequences packed in one row (sequence_ids, positions restarting at 0) give the hidden states
    each gives alone: RoPE / ALiBi / the window read the per-sequence position_ids."""
    config = _tiny(**switches)
    model = build_model("BertModel", config)
    params = init_params(model, jax.random.PRNGKey(1))
    rs = np.random.RandomState(0)
    a, b = rs.randint(3, 99, (1, 7)), rs.randint(3, 99, (1, 9))
    packed = np.concatenate([a, b], axis=1)
    sequence_ids = np.array([[1] * 7 + [2] * 9])
    out = model.apply({"params": params}, jnp.asarray(packed), sequence_ids=jnp.asarray(sequence_ids))
    alone_a = model.apply({"params": params}, jnp.asarray(a)).last_hidden_state
    alone_b = model.apply({"params": params}, jnp.asarray(b)).last_hidden_state
    np.testing.assert_allclose(out.last_hidden_state[:, :7], alone_a, atol=1e-5)
    np.testing.assert_allclose(out.last_hidden_state[:, 7:], alone_b, atol=1e-5)


def test_no_positions_is_permutation_equivariant():
    """position_embedding_type='none': no position table, and permuting the tokens permutes the outputs."""
    config = _tiny(position_embedding_type="none")
    model = build_model("BertModel", config)
    params = init_params(model, jax.random.PRNGKey(2))
    assert "position_embeddings" not in params["embeddings"]
    ids = np.random.RandomState(0).randint(3, 99, (2, 8))
    perm = np.random.RandomState(1).permutation(8)
    out = model.apply({"params": params}, jnp.asarray(ids)).last_hidden_state
    permuted = model.apply({"params": params}, jnp.asarray(ids[:, perm])).last_hidden_state
    np.testing.assert_allclose(np.asarray(out)[:, perm], permuted, atol=1e-5)


# ------------------------------------------------------------------------------ ModernBERT
def _modernbert_config(**kw):
    base = {k: v for k, v in TINY.items() if k not in ("hidden_act", "num_hidden_layers")}
    # local_attention 6: local layers see |q - k| <= 3, far less than the 20-token rows; theta per layer type.
    args = dict(hidden_activation="gelu", max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=6, global_attn_every_n_layers=2,
                num_hidden_layers=3, norm_bias=True,
                rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 300.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})
    return transformers.ModernBertConfig(**base, **{**args, **kw})


@pytest.mark.parametrize("hf_class, our_class, extra", [
    ("ModernBertForMaskedLM", "BertForMaskedLM", {}),
    ("ModernBertModel", "BertModel", {}),
    # ModernBERT's defaults: no norm biases, head dense bias on, every third layer global, SiLU -> SwiGLU.
    ("ModernBertForMaskedLM", "BertForMaskedLM", dict(norm_bias=False, classifier_bias=True, num_hidden_layers=4,
                                                      global_attn_every_n_layers=3, hidden_activation="silu")),
])
def test_modernbert_matches_transformers_and_exports(hf_class, our_class, extra, tmp_path, monkeypatch):
    import tests.test_architectures as arch
    monkeypatch.setattr(arch, "SEQ", 20)  # longer than the local window
    hf_config = _modernbert_config(**extra)
    inputs = arch._inputs(0, "mlm" if our_class == "BertForMaskedLM" else "none")
    ref, ref_model = _reference(hf_class, hf_config, tmp_path / "hf", inputs)
    ours, config, params = _ours(tmp_path / "hf", our_class, inputs)
    assert (config.local_attention_window, config.rope_theta, config.local_rope_theta) == (6, 300.0, 50.0)
    assert config.norm_position == "pre" and not config.first_layer_attention_norm and config.type_vocab_size == 0
    assert config.global_attn_every_n_layers == hf_config.layer_types.index("full_attention", 1)
    worst = _max_diff(ours, ref)
    log.info("%s %s: max abs diff %.3g over %s", hf_class, extra, worst, sorted(ref))
    _assert_export_round_trips(tmp_path, config, params, our_class, hf_class, ref_model)
    # The local layers really are local: a key outside every local window changes the global layers only.
    probs = np.asarray(ours["attentions.1"])
    far = np.abs(np.arange(20)[:, None] - np.arange(20)[None, :]) > 3
    assert np.all(probs[..., far] == 0.0) and np.any(np.asarray(ours["attentions.0"])[..., far] > 0)


def test_modernbert_layer_types_not_every_n_is_refused(tmp_path):
    hf_config = _modernbert_config()
    hf_config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    hf_config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layer_types"):
        BertConfig.from_hf(tmp_path)


# ------------------------------------------------------------------------------ ALiBi and the window
def test_alibi_slopes_follow_the_paper():
    """Press et al.: n = 8 heads -> 1/2, 1/4, ..., 1/256; n not a power of two -> the 2^floor(log2 n)
    slopes, then every other slope of twice that many."""
    np.testing.assert_allclose(pos_lib.alibi_slopes(8), [2.0 ** -k for k in range(1, 9)])
    np.testing.assert_allclose(pos_lib.alibi_slopes(4), [2.0 ** -(2 * k) for k in range(1, 5)])
    sixteen = [2.0 ** (-k / 2) for k in range(1, 17)]
    np.testing.assert_allclose(pos_lib.alibi_slopes(12), [2.0 ** -k for k in range(1, 9)] + sixteen[0::2][:4])


def _np_attention_probs(hidden: np.ndarray, layer: dict, heads: int, mask: np.ndarray, bias) -> np.ndarray:
    """softmax(q k^T / sqrt(D) + bias) over unmasked keys, q/k from a BERT layer's params: [B, N, Q, K]."""
    proj = lambda name: np.einsum("blh,hnd->blnd", hidden, np.asarray(layer["attention"]["self"][name]["kernel"])) + \
        np.asarray(layer["attention"]["self"][name]["bias"])
    q, k = proj("query"), proj("key")
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1]) + bias
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("heads", [4, 2])
def test_alibi_attention_matches_numpy(heads):
    """One ALiBi layer with padding: its attention probabilities are softmax(qk/sqrt(d) - m_h |i - j|)
    over the real keys (symmetric distance, MosaicBERT's bidirectional form), computed in NumPy."""
    config = _tiny(position_embedding_type="alibi", num_attention_heads=heads, num_hidden_layers=1)
    model = build_model("BertModel", config)
    params = init_params(model, jax.random.PRNGKey(3))
    assert "position_embeddings" not in params["embeddings"]
    ids = np.random.RandomState(0).randint(3, 99, (2, 10))
    mask = np.ones((2, 10), np.int32)
    mask[1, 7:] = 0
    out = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), output_attentions=True,
                      output_hidden_states=True)
    slopes = np.array([2.0 ** (-8.0 * i / heads) for i in range(1, heads + 1)])
    distance = np.abs(np.arange(10)[:, None] - np.arange(10)[None, :])
    bias = -slopes[None, :, None, None] * distance[None, None]
    want = _np_attention_probs(np.asarray(out.hidden_states[0], np.float64), params["encoder"]["layer"]["0"], heads,
                               mask.astype(bool)[:, None, None, :], bias)
    np.testing.assert_allclose(np.asarray(out.attentions[0]), want, atol=1e-6)


def test_window_mask_matches_numpy():
    """Layer 1 of 2 (global every 2) is local with window 6: probabilities are the NumPy softmax over
    the keys with |i - j| <= 3 that are not padding; layer 0 is global."""
    config = _tiny(local_attention_window=6, global_attn_every_n_layers=2)
    model = build_model("BertModel", config)
    params = init_params(model, jax.random.PRNGKey(4))
    ids = np.random.RandomState(0).randint(3, 99, (2, 12))
    mask = np.ones((2, 12), np.int32)
    mask[0, 9:] = 0
    out = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), output_attentions=True,
                      output_hidden_states=True)
    window = np.abs(np.arange(12)[:, None] - np.arange(12)[None, :]) <= 3
    for layer, keep in ((0, mask.astype(bool)[:, None, None, :]),
                        (1, mask.astype(bool)[:, None, None, :] & window[None, None])):
        want = _np_attention_probs(np.asarray(out.hidden_states[layer], np.float64),
                                   params["encoder"]["layer"][str(layer)], config.num_attention_heads, keep, 0.0)
        np.testing.assert_allclose(np.asarray(out.attentions[layer]), want, atol=1e-6)


@pytest.mark.parametrize("switches", [
    dict(position_embedding_type="rotary", local_attention_window=4, global_attn_every_n_layers=2,
         local_rope_theta=30.0, norm_position="pre", first_layer_attention_norm=False, num_hidden_layers=3),
    dict(position_embedding_type="alibi", local_attention_window=6, global_attn_every_n_layers=3,
         num_hidden_layers=3),
])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_match_unrolled(switches, remat):
    """Local/global alternation, per-layer theta and layer 0's missing norm under nn.scan (the layer
    index is a scanned input) give the unrolled model's loss and gradients (<= 1e-6)."""
    from bert_jax.hf import convert_layer_layout
    config = _tiny(**switches, remat_policy=remat)
    model = build_model("BertForMaskedLM", config)
    scanned = build_model("BertForMaskedLM", config.replace(scan_layers=True))
    params = init_params(model, jax.random.PRNGKey(5))
    scan_params = convert_layer_layout(params, config.num_hidden_layers, scan_layers=True)
    rs = np.random.RandomState(0)
    ids = rs.randint(3, 99, (2, 16))
    mask = np.ones((2, 16), np.int32)
    mask[1, 12:] = 0
    labels = np.where(rs.rand(2, 16) < 0.4, ids, -100)
    batch = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), labels=jnp.asarray(labels))
    loss_fn = lambda m: jax.jit(jax.value_and_grad(lambda p: m.apply({"params": p}, **batch).loss))
    loss, grads = loss_fn(model)(params)
    scan_loss, scan_grads = loss_fn(scanned)(scan_params)
    assert abs(float(loss) - float(scan_loss)) <= 1e-6
    unrolled = convert_layer_layout(scan_grads, config.num_hidden_layers, scan_layers=False)
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), grads, unrolled)
    assert max(jax.tree.leaves(diffs)) <= 1e-6


@pytest.mark.parametrize("impl", ["dot_product", "flash", "pallas_gpu"])
@pytest.mark.parametrize("switches", [dict(local_attention_window=4, global_attn_every_n_layers=2),
                                      dict(position_embedding_type="alibi")])
def test_kernels_express_the_window_and_alibi_or_fall_back(impl, switches, caplog):
    """dot_product takes the window as its dense mask and ALiBi as its bias; flash kernels can express
    neither and fall back to xla (logged) rather than attend globally / without the bias."""
    config = _tiny(**switches, max_position_embeddings=64)
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 99, (2, 16)))
    mask = jnp.asarray(np.array([[1] * 16, [1] * 11 + [0] * 5]))
    model = build_model("BertModel", config)
    params = init_params(model, jax.random.PRNGKey(6))
    want = model.apply({"params": params}, ids, mask).last_hidden_state
    with caplog.at_level(logging.WARNING):
        got = build_model("BertModel", config.replace(attention_impl=impl)).apply({"params": params}, ids,
                                                                                  mask).last_hidden_state
    # Real tokens only: pallas_gpu's single segment-id array gives padded queries other (unused) values.
    real = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)


def test_analytic_param_count_of_rotary_and_modernbert_like_models():
    """flops.non_embedding_params follows the new switches (no position table, no head dense bias,
    layer 0's kept identity norm) as the params of BertForMaskedLM count them."""
    from bert_jax import flops
    for switches in (dict(position_embedding_type="rotary"),
                     dict(position_embedding_type="rotary", local_attention_window=4, norm_position="pre",
                          first_layer_attention_norm=False, mlp_type="geglu", type_vocab_size=0, norm_bias=False,
                          attention_bias=False, mlp_bias=False, mlm_head_bias=False)):
        config = _tiny(**switches)
        params = init_params(build_model("BertForMaskedLM", config))
        assert flops.non_embedding_params(config) == flops.count_non_embedding_params(params), switches


@pytest.mark.parametrize("switches", [dict(position_embedding_type="rotary"), dict(position_embedding_type="alibi"),
                                      dict(position_embedding_type="rotary", local_attention_window=4,
                                           global_attn_every_n_layers=2)])
def test_kv_cache_decoding_matches_the_full_forward(switches):
    """A decoder with RoPE (keys rotated before they are cached), ALiBi or a window (key positions of
    the whole cache) gives the full forward's logits when fed through the KV cache in pieces."""
    from tests.test_decoder import cache_vs_full_forward
    assert cache_vs_full_forward(**switches) < 1e-5
