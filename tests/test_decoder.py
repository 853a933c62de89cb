"""Decoder: causal mask, KV cache, cross-attention, generate — against the full forward and transformers."""

import numpy as np
import pytest
import torch
import transformers

import bert_jax
from bert_jax.hf import load_hf_checkpoint
from bert_jax.modeling import build_model, init_cache
from tests import cases

ATOL = 1e-5


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """(torch model, our model, params) for a tiny BertLMHeadModel with cross-attention."""
    torch.manual_seed(0)
    cfg = dict(cases.TINY, is_decoder=True, add_cross_attention=True)
    torch_model = transformers.BertLMHeadModel(transformers.BertConfig(**cfg)).eval()
    path = str(tmp_path_factory.mktemp("decoder"))
    torch_model.save_pretrained(path)
    config, params = load_hf_checkpoint(path, "BertForCausalLM")
    return torch_model, build_model("BertForCausalLM", config), params


def _encoder_states(batch=2, src=5, seed=3):
    rs = np.random.RandomState(seed)
    enc = rs.randn(batch, src, cases.TINY["hidden_size"]).astype(np.float32)
    enc_mask = np.ones((batch, src), np.int64)
    enc_mask[0, 3:] = 0
    return enc, enc_mask


def _incremental_logits(model, params, ids, mask, chunks, enc=None, enc_mask=None, max_length=None):
    """Feeds `ids` through the cache in `chunks` (lengths) and concatenates the logits."""
    import jax
    batch, seq = ids.shape
    max_length = max_length or seq
    cache = init_cache(model, params, batch, max_length, enc)
    # A mask over the whole cache keeps shapes fixed (one compile per chunk length); the causal
    # mask hides positions not written yet.
    full_mask = np.pad(mask, ((0, 0), (0, max_length - seq)), constant_values=1)
    apply = jax.jit(lambda v, i, m, e, em: model.apply(v, i, m, encoder_hidden_states=e, encoder_attention_mask=em,
                                                       mutable=["cache"]))
    logits, start = [], 0
    for length in chunks:
        end = start + length
        out, variables = apply({"params": params, "cache": cache}, ids[:, start:end], full_mask, enc, enc_mask)
        cache = variables["cache"]
        logits.append(np.asarray(out.logits))
        start = end
    return np.concatenate(logits, axis=1)


def cache_vs_full_forward(**switches) -> float:
    """Max |logits| difference between the full forward of a tiny causal decoder (with `switches`) and the
    same ids fed through its KV cache: a prefill of 4, then one token at a time, in a longer cache."""
    config = bert_jax.BertConfig(**dict(cases.TINY, is_decoder=True, add_cross_attention=True, **switches))
    model = bert_jax.BertForCausalLM(config)
    params = bert_jax.init_params(model)
    inputs = cases.base_inputs()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    enc, enc_mask = _encoder_states()
    full = np.asarray(model.apply({"params": params}, ids, mask, encoder_hidden_states=enc,
                                  encoder_attention_mask=enc_mask).logits)
    inc = _incremental_logits(model, params, ids, mask, [4, 1, 1, 1, 1, 1], enc, enc_mask, max_length=12)
    return float(np.abs(inc - full)[mask.astype(bool)].max())


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key_query"])
def test_cache_matches_full_forward(position_embedding_type):
    diff = cache_vs_full_forward(position_embedding_type=position_embedding_type)
    assert diff < ATOL, diff


def test_full_forward_and_cross_attentions_match_transformers(decoder):
    torch_model, model, params = decoder
    inputs = cases.base_inputs()
    enc, enc_mask = _encoder_states()
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(inputs["input_ids"]),
                          attention_mask=torch.tensor(inputs["attention_mask"]),
                          encoder_hidden_states=torch.tensor(enc), encoder_attention_mask=torch.tensor(enc_mask),
                          output_attentions=True)
    ours = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"], encoder_hidden_states=enc,
                       encoder_attention_mask=enc_mask, output_attentions=True)
    assert np.abs(np.asarray(ours.logits) - ref.logits.numpy()).max() < ATOL
    for got, want in zip(ours.cross_attentions, ref.cross_attentions):
        assert np.abs(np.asarray(got) - want.numpy()).max() < ATOL


def test_greedy_generate_matches_transformers_without_cross_attention():
    torch.manual_seed(1)
    cfg = dict(cases.TINY, is_decoder=True)
    torch_model = transformers.BertLMHeadModel(transformers.BertConfig(**cfg)).eval()
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    import tempfile
    with tempfile.TemporaryDirectory() as path:
        torch_model.save_pretrained(path)
        config, params = load_hf_checkpoint(path, "BertForCausalLM")
    assert state  # the model was really saved
    prompt = np.random.RandomState(4).randint(1, cases.TINY["vocab_size"], (3, 6))
    ours = bert_jax.generate(bert_jax.BertForCausalLM(config), params, prompt, 10)
    with torch.no_grad():
        ref = torch_model.generate(input_ids=torch.tensor(prompt), max_new_tokens=10, do_sample=False,
                                   attention_mask=torch.ones(prompt.shape, dtype=torch.long))
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


def test_greedy_generate_matches_transformers_with_cross_attention(decoder):
    torch_model, model, params = decoder
    prompt = np.random.RandomState(5).randint(1, cases.TINY["vocab_size"], (2, 5))
    enc, enc_mask = _encoder_states()
    ours = bert_jax.generate(model, params, prompt, 8, encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
    with torch.no_grad():
        # transformers 5.24 starts a DynamicCache here, which its cross-attention cannot use; give it the
        # encoder-decoder cache it needs.
        cache = transformers.EncoderDecoderCache(transformers.DynamicCache(), transformers.DynamicCache())
        ref = torch_model.generate(input_ids=torch.tensor(prompt), encoder_hidden_states=torch.tensor(enc),
                                   encoder_attention_mask=torch.tensor(enc_mask), max_new_tokens=8, do_sample=False,
                                   cache=cache, attention_mask=torch.ones(prompt.shape, dtype=torch.long))
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


def test_sampling_is_seeded_and_top_k_1_is_greedy(decoder):
    import jax
    _, model, params = decoder
    prompt = np.random.RandomState(6).randint(1, cases.TINY["vocab_size"], (2, 4))
    enc, _ = _encoder_states()
    kw = dict(encoder_hidden_states=enc)
    a = bert_jax.generate(model, params, prompt, 12, do_sample=True, rng=jax.random.PRNGKey(0), temperature=2.0, **kw)
    b = bert_jax.generate(model, params, prompt, 12, do_sample=True, rng=jax.random.PRNGKey(0), temperature=2.0, **kw)
    c = bert_jax.generate(model, params, prompt, 12, do_sample=True, rng=jax.random.PRNGKey(1), temperature=2.0, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = bert_jax.generate(model, params, prompt, 12, **kw)
    top1 = bert_jax.generate(model, params, prompt, 12, do_sample=True, top_k=1, rng=jax.random.PRNGKey(2), **kw)
    tiny_p = bert_jax.generate(model, params, prompt, 12, do_sample=True, top_p=1e-6, rng=jax.random.PRNGKey(3), **kw)
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(tiny_p, greedy)


def test_eos_pads_the_rest(decoder):
    _, model, params = decoder
    prompt = np.random.RandomState(6).randint(1, cases.TINY["vocab_size"], (2, 4))
    enc, _ = _encoder_states()
    greedy = np.asarray(bert_jax.generate(model, params, prompt, 10, encoder_hidden_states=enc))
    eos = int(greedy[0, 6])  # a token the first row emits at step 3
    out = np.asarray(bert_jax.generate(model, params, prompt, 10, encoder_hidden_states=enc, eos_token_id=eos,
                                       pad_token_id=98))
    first = 4 + int(np.argmax(greedy[0, 4:] == eos))
    np.testing.assert_array_equal(out[0, :first + 1], greedy[0, :first + 1])
    assert (out[0, first + 1:] == 98).all()


def test_generate_errors(decoder):
    _, model, params = decoder
    with pytest.raises(ValueError, match="max_position_embeddings"):
        bert_jax.generate(model, params, np.ones((1, 60), np.int32), 10)
    with pytest.raises(ValueError, match="rng"):
        bert_jax.generate(model, params, np.ones((1, 3), np.int32), 2, do_sample=True)
    with pytest.raises(ValueError, match="is_decoder"):
        bert_jax.generate(bert_jax.BertForCausalLM(bert_jax.BertConfig(**cases.TINY)), params,
                          np.ones((1, 3), np.int32), 2)
    with pytest.raises(ValueError, match="input_ids"):
        bert_jax.generate(model, params, np.full((1, 3), 500, np.int32), 2)


def test_decode_past_the_cache_raises(decoder):
    _, model, params = decoder
    cache = init_cache(model, params, 1, 4)
    with pytest.raises(ValueError, match="cache"):
        model.apply({"params": params, "cache": cache}, np.ones((1, 6), np.int32), mutable=["cache"])
