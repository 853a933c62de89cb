"""scan_layers: the scanned encoder equals the unrolled one (outputs, gradients, cache), and
checkpoints convert between the two layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import bert_jax
from bert_jax.hf import convert_layer_layout, load_hf_checkpoint, save_hf_checkpoint
from bert_jax.modeling import init_cache
from tests import cases


@pytest.fixture(scope="module")
def decoder_pair():
    config = bert_jax.BertConfig(**dict(cases.TINY, is_decoder=True, add_cross_attention=True,
                                        position_embedding_type="relative_key_query"))
    unrolled = bert_jax.BertForCausalLM(config)
    params = bert_jax.init_params(unrolled, jax.random.PRNGKey(1))
    scanned = bert_jax.BertForCausalLM(config.replace(scan_layers=True))
    return unrolled, scanned, params, convert_layer_layout(params, config.num_hidden_layers, scan_layers=True)


def _inputs():
    batch = {k: jnp.asarray(v) for k, v in cases.base_inputs().items()}
    batch["encoder_hidden_states"] = jnp.asarray(np.random.RandomState(0).randn(cases.BATCH, 5, 32), jnp.float32)
    return batch


def test_scanned_params_have_a_layers_axis(decoder_pair):
    _, scanned, _, stacked = decoder_pair
    shapes = jax.eval_shape(lambda: bert_jax.init_params(scanned))
    kernel = shapes["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
    assert kernel.shape == (cases.TINY["num_hidden_layers"], 32, 4, 8)
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, stacked)
    boxed = bert_jax.init_params(scanned, boxed=True)
    names = boxed["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"].names
    assert names == ("layers", "embed", "heads", "kv")


def test_scan_equals_unrolled_outputs_and_grads(decoder_pair):
    unrolled, scanned, params, stacked = decoder_pair
    batch = _inputs()
    kw = dict(output_hidden_states=True, output_attentions=True, head_mask=jnp.array([[1.0, 0.0, 1.0, 1.0],
                                                                                      [1.0, 1.0, 0.5, 1.0]]))
    a = unrolled.apply({"params": params}, **batch, **kw)
    b = scanned.apply({"params": stacked}, **batch, **kw)
    for name in ("logits",):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5)
    for group in ("hidden_states", "attentions", "cross_attentions"):
        assert len(getattr(a, group)) == len(getattr(b, group))
        for x, y in zip(getattr(a, group), getattr(b, group)):
            np.testing.assert_allclose(x, y, atol=1e-5)
    labels = jnp.where(batch["attention_mask"] == 1, batch["input_ids"], -100)
    loss = lambda model: jax.jit(jax.value_and_grad(
        lambda p: model.apply({"params": p}, **batch, labels=labels).loss))
    la, ga = loss(unrolled)(params)
    lb, gb = loss(scanned)(stacked)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    gb = convert_layer_layout(gb, cases.TINY["num_hidden_layers"], scan_layers=False)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), ga, gb)


def test_scan_with_remat_and_cache(decoder_pair):
    unrolled, scanned, params, stacked = decoder_pair
    batch = _inputs()
    full = unrolled.apply({"params": params}, **batch).logits
    remat = bert_jax.BertForCausalLM(scanned.config.replace(remat_policy="dots_saveable"))
    np.testing.assert_allclose(remat.apply({"params": stacked}, **batch).logits, full, atol=1e-5)
    cache = init_cache(scanned, stacked, cases.BATCH, cases.SEQ, batch["encoder_hidden_states"])
    assert cache["bert"]["encoder"]["layer"]["attention"]["self"]["cached_key"].shape[:3] == (2, cases.BATCH,
                                                                                            cases.SEQ)
    enc = batch["encoder_hidden_states"]
    out1, v = scanned.apply({"params": stacked, "cache": cache}, batch["input_ids"][:, :5],
                            encoder_hidden_states=enc, mutable=["cache"])
    out2, _ = scanned.apply({"params": stacked, "cache": v["cache"]}, batch["input_ids"][:, 5:6],
                            encoder_hidden_states=enc, mutable=["cache"])
    ref = unrolled.apply({"params": params}, batch["input_ids"][:, :6], encoder_hidden_states=enc).logits
    np.testing.assert_allclose(np.concatenate([out1.logits, out2.logits], 1), ref, atol=1e-5)


def test_hf_checkpoint_roundtrip_in_scanned_layout(tmp_path):
    torch.manual_seed(0)
    torch_model = transformers.BertForPreTraining(transformers.BertConfig(**cases.TINY)).eval()
    torch_model.save_pretrained(tmp_path / "hf")
    config, stacked = load_hf_checkpoint(tmp_path / "hf", "BertForPreTraining", scan_layers=True)
    assert config.scan_layers
    assert stacked["bert"]["encoder"]["layer"]["output"]["dense"]["kernel"].shape == (2, 37, 32)
    _, unrolled = load_hf_checkpoint(tmp_path / "hf", "BertForPreTraining")
    jax.tree.map(np.testing.assert_array_equal, convert_layer_layout(stacked, 2, scan_layers=False), unrolled)
    save_hf_checkpoint(tmp_path / "ours", config, stacked, "BertForPreTraining")
    reread = transformers.BertForPreTraining.from_pretrained(tmp_path / "ours")
    for key, value in torch_model.state_dict().items():
        assert torch.equal(value, reread.state_dict()[key]), key


def test_layout_errors():
    flat = {"bert": {"encoder": {"layer": {"0": {"w": jnp.ones(2)}, "2": {"w": jnp.ones(2)}}}}}
    with pytest.raises(ValueError, match="expected 0..1"):
        convert_layer_layout(flat, 2, scan_layers=True)
    with pytest.raises(ValueError, match="leading axis 3"):
        convert_layer_layout({"encoder": {"layer": {"w": jnp.ones((3, 2))}}}, 2, scan_layers=False)
