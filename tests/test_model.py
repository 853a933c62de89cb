"""Model behaviour: jit, dropout, input checks, config validation, sparse MLM, remat, kernels, dtypes, losses."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bert_jax
from bert_jax.modeling import losses
from tests import cases


@pytest.fixture(scope="module")
def mlm():
    config = bert_jax.BertConfig(**cases.TINY)
    model = bert_jax.BertForMaskedLM(config)
    return model, bert_jax.init_params(model, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def batch():
    inputs = cases.base_inputs()
    return {k: jnp.asarray(v) for k, v in inputs.items()}


def test_jit_matches_eager(mlm, batch):
    model, params = mlm
    eager = model.apply({"params": params}, **batch).logits
    jitted = jax.jit(model.apply)({"params": params}, **batch).logits
    np.testing.assert_allclose(eager, jitted, atol=1e-5)


def test_dropout(mlm, batch):
    model, params = mlm
    apply = jax.jit(model.apply, static_argnames=("deterministic",))
    a = apply({"params": params}, **batch, deterministic=True).logits
    b = apply({"params": params}, **batch, deterministic=True).logits
    np.testing.assert_array_equal(a, b)
    key = jax.random.PRNGKey(1)
    c = apply({"params": params}, **batch, deterministic=False, rngs={"dropout": key}).logits
    d = apply({"params": params}, **batch, deterministic=False, rngs={"dropout": key}).logits
    e = apply({"params": params}, **batch, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)}).logits
    np.testing.assert_array_equal(c, d)
    assert np.abs(c - a).max() > 1e-3 and np.abs(c - e).max() > 1e-3


def test_attention_dropout_is_per_element(batch):
    # transformers drops each probability independently; HF's old Flax BERT broadcast one mask over
    # batch and heads. With all rows unpadded the zero patterns must differ between heads.
    config = bert_jax.BertConfig(**dict(cases.TINY, attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0))
    model = bert_jax.BertModel(config)
    params = bert_jax.init_params(model)
    out = model.apply({"params": params}, batch["input_ids"], deterministic=False, output_attentions=True,
                      rngs={"dropout": jax.random.PRNGKey(0)})
    probs = np.asarray(out.attentions[0])  # [B, N, Q, K]
    zeros = probs == 0
    assert 0.3 < zeros.mean() < 0.7
    assert not np.array_equal(zeros[0, 0], zeros[0, 1]) and not np.array_equal(zeros[0, 0], zeros[1, 0])


@pytest.mark.parametrize("change, message", [
    (lambda b: dict(b, input_ids=b["input_ids"].at[0, 0].set(cases.TINY["vocab_size"])), "input_ids contains 99"),
    (lambda b: dict(b, input_ids=b["input_ids"].at[0, 0].set(-1)), "input_ids contains -1"),
    (lambda b: dict(b, token_type_ids=b["token_type_ids"].at[0, 0].set(3)), "token_type_ids contains 3"),
    (lambda b: dict(b, attention_mask=b["attention_mask"][:, :-1]), "attention_mask has shape"),
    (lambda b: dict(b, token_type_ids=b["token_type_ids"][:1]), "token_type_ids has shape"),
    (lambda b: dict(b, position_ids=jnp.arange(cases.SEQ)[None] + 60), "position_ids contains"),
    (lambda b: {k: jnp.tile(v, (1, 8)) for k, v in b.items()}, "exceeds max_position_embeddings=64"),
    (lambda b: dict(b, input_ids=b["input_ids"][0]), r"input_ids must be \[batch, seq\]"),
    (lambda b: dict(b, input_ids=b["input_ids"].astype(jnp.float32)), "input_ids must be integers"),
    (lambda b: dict(b, inputs_embeds=jnp.zeros((2, cases.SEQ, 32))), "exactly one of input_ids or inputs_embeds"),
])
def test_bad_inputs_raise(mlm, batch, change, message):
    model, params = mlm
    with pytest.raises(ValueError, match=message):
        model.apply({"params": params}, **change(batch))


def test_shape_errors_raise_under_jit_values_do_not(mlm, batch):
    model, params = mlm
    apply = jax.jit(model.apply)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        apply({"params": params}, batch["input_ids"], batch["attention_mask"][:, :-1])
    # documented: out-of-range values cannot be seen under jit (tracers); they do not raise there
    out = apply({"params": params}, batch["input_ids"].at[0, 0].set(500))
    assert out.logits.shape == (cases.BATCH, cases.SEQ, cases.TINY["vocab_size"])


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 30, "not a multiple of num_attention_heads"),
    ("hidden_act", "gelu2", "hidden_act"),
    ("position_embedding_type", "rope", "position_embedding_type"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
    ("vocab_size", 0, "vocab_size"),
    ("num_hidden_layers", 2.5, "num_hidden_layers"),
    ("dtype", "int8", "dtype"),
    ("attention_impl", "magic", "attention_impl"),
    ("remat_policy", "sometimes", "remat_policy"),
    ("problem_type", "ranking", "problem_type"),
    ("pad_token_id", 500, "pad_token_id"),
    ("add_cross_attention", True, "is_decoder"),
    ("layer_norm_eps", -1.0, "layer_norm_eps"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        bert_jax.BertConfig(**{**cases.TINY, field: value})


def test_config_labels_and_hashing():
    config = bert_jax.BertConfig(id2label={"0": "neg", "1": "neu", "2": "pos"})
    assert config.num_labels == 3 and config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert hash(config) == hash(bert_jax.BertConfig(id2label={0: "neg", 1: "neu", 2: "pos"}))
    assert config.replace(num_labels=5).id2label[4] == "LABEL_4"
    with pytest.raises(ValueError, match="num_labels=4 disagrees"):
        bert_jax.BertConfig(num_labels=4, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="no field"):
        config.replace(hiden_size=3)
    assert bert_jax.BertConfig(dtype=jnp.bfloat16).dtype == "bfloat16"


def test_sparse_mlm_equals_dense_gather(mlm, batch):
    model, params = mlm
    positions = jnp.array([[1, 4, 0], [2, 3, 5]])
    ids = jnp.take_along_axis(batch["input_ids"], positions, axis=1)
    weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    dense = model.apply({"params": params}, **batch)
    sparse = model.apply({"params": params}, **batch, masked_positions=positions, labels=ids, masked_lm_weights=weights)
    expected = jnp.take_along_axis(dense.logits, positions[..., None], axis=1)
    np.testing.assert_allclose(sparse.logits, expected, atol=1e-5)
    dense_labels = jnp.full(batch["input_ids"].shape, -100)
    dense_labels = dense_labels.at[0, 1].set(ids[0, 0]).at[0, 4].set(ids[0, 1])
    dense_labels = dense_labels.at[1, 2].set(ids[1, 0]).at[1, 3].set(ids[1, 1]).at[1, 5].set(ids[1, 2])
    dense_loss = model.apply({"params": params}, **batch, labels=dense_labels).loss
    np.testing.assert_allclose(sparse.loss, dense_loss, rtol=1e-6)


def _loss_and_grads(config, batch):
    labels = jnp.where(batch["attention_mask"] == 1, batch["input_ids"], -100)
    model = bert_jax.BertForMaskedLM(config)
    params = bert_jax.init_params(model, jax.random.PRNGKey(0))
    fn = lambda p: model.apply({"params": p}, **batch, labels=labels, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(3)}).loss
    return jax.jit(jax.value_and_grad(fn))(params)


@pytest.fixture(scope="module")
def plain_loss_and_grads(batch):
    return _loss_and_grads(bert_jax.BertConfig(**cases.TINY), batch)


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "minimal"])
def test_remat_matches_plain(batch, plain_loss_and_grads, policy):
    loss, grads = plain_loss_and_grads
    loss_r, grads_r = _loss_and_grads(bert_jax.BertConfig(**cases.TINY, remat_policy=policy), batch)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads_r)


def test_dot_product_kernel_matches_xla(batch):
    config = bert_jax.BertConfig(**cases.TINY)
    model = bert_jax.BertModel(config)
    params = bert_jax.init_params(model)
    ref = model.apply({"params": params}, **batch).last_hidden_state
    fused = bert_jax.BertModel(config.replace(attention_impl="dot_product"))
    out = fused.apply({"params": params}, **batch)
    np.testing.assert_allclose(out.last_hidden_state, ref, atol=1e-5)
    # output_attentions forces the xla kernel (probabilities are only materialised there)
    with_probs = fused.apply({"params": params}, **batch, output_attentions=True)
    assert len(with_probs.attentions) == cases.TINY["num_hidden_layers"]


def test_bfloat16_compute(mlm, batch):
    model, params = mlm
    bf16 = bert_jax.BertForMaskedLM(model.config.replace(dtype="bfloat16"))
    out = bf16.apply({"params": params}, **batch)
    ref = model.apply({"params": params}, **batch)
    assert out.logits.dtype == jnp.bfloat16
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    np.testing.assert_allclose(out.logits.astype(jnp.float32), ref.logits, atol=0.1)
    assert np.isfinite(np.asarray(out.logits, np.float32)).all()


def test_param_dtype_bfloat16():
    model = bert_jax.BertModel(bert_jax.BertConfig(**dict(cases.TINY, param_dtype="bfloat16", dtype="bfloat16")))
    params = bert_jax.init_params(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_logical_axis_names_on_every_param(mlm):
    model, _ = mlm
    boxed = bert_jax.init_params(model, boxed=True)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, bert_jax.modeling.nn.Partitioned))
    assert leaves and all(isinstance(x, bert_jax.modeling.nn.Partitioned) for x in leaves)
    names = {n for leaf in leaves for n in leaf.names if n}
    assert {"vocab", "embed", "heads", "kv", "mlp", "norm"} <= names


# ---- losses against torch.nn.functional --------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_cross_entropy_matches_torch(batch_size, length, classes, seed):
    rs = np.random.RandomState(seed)
    logits = rs.randn(batch_size, length, classes).astype(np.float32) * 3
    labels = rs.randint(0, classes, (batch_size, length))
    labels[rs.rand(batch_size, length) < 0.3] = -100
    labels[0, 0] = 0  # at least one target
    ours = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits).reshape(-1, classes),
                                            torch.tensor(labels).reshape(-1), ignore_index=-100)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_sequence_classification_losses_match_torch():
    rs = np.random.RandomState(0)
    logits = rs.randn(4, 3).astype(np.float32)
    multi = (rs.rand(4, 3) < 0.5).astype(np.float32)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(multi))
    np.testing.assert_allclose(losses.sequence_classification_loss(jnp.asarray(logits), jnp.asarray(multi)),
                               ref.numpy(), rtol=1e-6)
    reg_logits, targets = rs.randn(4, 1).astype(np.float32), rs.randn(4).astype(np.float32)
    ref = torch.nn.functional.mse_loss(torch.tensor(reg_logits).squeeze(), torch.tensor(targets))
    np.testing.assert_allclose(losses.sequence_classification_loss(jnp.asarray(reg_logits), jnp.asarray(targets)),
                               ref.numpy(), rtol=1e-6)
    assert losses.infer_problem_type(3, jnp.array([1, 2])) == "single_label_classification"
    assert losses.infer_problem_type(3, jnp.array([[1.0, 0.0, 1.0]])) == "multi_label_classification"
    assert losses.infer_problem_type(1, jnp.array([0.5])) == "regression"


def test_all_ignored_loss_is_zero_not_nan():
    loss = losses.cross_entropy(jnp.zeros((2, 3, 5)), jnp.full((2, 3), -100))
    assert float(loss) == 0.0


def test_question_answering_loss_clamps_and_ignores():
    rs = np.random.RandomState(1)
    start, end = rs.randn(3, 6).astype(np.float32), rs.randn(3, 6).astype(np.float32)
    sp, ep = np.array([1, 50, -3]), np.array([2, 4, 6])
    ref_fn = torch.nn.CrossEntropyLoss(ignore_index=6)
    ref = (ref_fn(torch.tensor(start), torch.tensor(sp).clamp(0, 6))
           + ref_fn(torch.tensor(end), torch.tensor(ep).clamp(0, 6))) / 2
    np.testing.assert_allclose(losses.question_answering_loss(start, end, sp, ep), ref.numpy(), rtol=1e-6)
