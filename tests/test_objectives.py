"""Pretraining objective switches: the masking rate, the [MASK]/random/keep split, whole-word masking (dynamic
and static paths, wired from `config.data`), and ELECTRA replaced-token detection (`config.objective="electra"`)."""

import os
import random
import sys

import numpy as np
import pytest

from bert_jax.data import pretraining
from bert_jax.data.dynamic import DynamicMasker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, MASK_ID, SPECIALS = 1000, 4, (0, 1, 2, 3, 4)
CONTINUATIONS = tuple(range(900, 1000))  # ids of '##' pieces in the synthetic vocab


def _pretrain_config(arg="size=tiny,runlocal"):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import pretrain
    return pretrain.get_config(arg)


def _synthetic_examples(n=1500, seq=64, seed=0):
    """Rows of [CLS] w ... [SEP] pad...: ids in [5, 900) start words, ids in [900, 1000) continue them."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        length = int(rng.integers(seq // 2, seq + 1))
        ids = np.zeros(seq, np.int32)
        ids[0], ids[length - 1] = 2, 3
        ids[1:length - 1] = rng.integers(5, VOCAB, length - 2)
        ids[1] = rng.integers(5, 900)  # a row starts with a word, not a continuation
        mask = np.zeros(seq, np.int32)
        mask[:length] = 1
        examples.append({"input_ids": ids, "attention_mask": mask})
    return examples


def _masker(**kwargs):
    kwargs.setdefault("max_predictions_per_seq", 20)
    return DynamicMasker(VOCAB, MASK_ID, SPECIALS, continuation_token_ids=CONTINUATIONS, **kwargs)


def _split_counts(masker, examples):
    """(number predicted, became [MASK], kept, other) over all examples."""
    total = became_mask = kept = 0
    for i, e in enumerate(examples):
        out = masker(e, index=i)
        w = out["masked_lm_weights"] > 0
        positions, labels = out["masked_lm_positions"][w], out["masked_lm_ids"][w]
        now = out["input_ids"][positions]
        total += len(positions)
        became_mask += int(np.sum(now == MASK_ID))
        kept += int(np.sum(now == labels))
    return total, became_mask, kept, total - became_mask - kept


@pytest.mark.parametrize("mask_fraction,random_fraction", [(0.8, 0.1), (0.5, 0.3), (1.0, 0.0), (0.0, 0.0)])
def test_dynamic_split_matches_the_fractions(mask_fraction, random_fraction):
    examples = _synthetic_examples(800)
    total, became_mask, kept, other = _split_counts(
        _masker(mask_token_fraction=mask_fraction, random_token_fraction=random_fraction), examples)
    assert total > 5_000
    # A random draw equals the label or [MASK] with probability 1/VOCAB each: shifts of at most 2/VOCAB.
    keep_fraction = 1 - mask_fraction - random_fraction
    for count, p, slack in ((became_mask, mask_fraction, random_fraction / VOCAB),
                            (kept, keep_fraction, random_fraction / VOCAB),
                            (other, random_fraction, 2 * random_fraction / VOCAB)):
        sigma = np.sqrt(total * p * (1 - p))
        assert abs(count / total - p) <= (5 * sigma) / total + slack + 1e-12, (count / total, p)


def test_static_split_matches_the_fractions():
    rng = random.Random(3)
    words = [f"w{i}" for i in range(500)]
    vocab_words = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"] + words
    total = became_mask = kept = 0
    for _ in range(600):
        tokens = ["[CLS]"] + [rng.choice(words) for _ in range(60)] + ["[SEP]"]
        out, positions, labels = pretraining.create_masked_lm_predictions(
            tokens, 0.15, 20, vocab_words, rng, mask_token_fraction=0.6, random_token_fraction=0.3)
        total += len(positions)
        became_mask += sum(out[p] == "[MASK]" for p in positions)
        kept += sum(out[p] == label for p, label in zip(positions, labels))
    for count, p in ((became_mask, 0.6), (kept, 0.1)):
        assert abs(count / total - p) <= 5 * np.sqrt(p * (1 - p) / total) + 2 / len(vocab_words)


def test_default_split_is_the_original_draws():
    """The defaults reproduce the 80/10/10 draws the masker made before the fractions were switches."""
    masker = _masker(seed=7)
    for i, e in enumerate(_synthetic_examples(50, seed=1)):
        out = masker(e, index=i)
        rng = np.random.default_rng([7, 0, i])
        ids = e["input_ids"]
        candidates = np.flatnonzero((e["attention_mask"] != 0) & ~np.isin(ids, SPECIALS))
        k = min(20, max(1, int(round(int(e["attention_mask"].sum()) * 0.15))))
        positions = np.sort(rng.permutation(candidates)[:k])
        labels = ids[positions]
        u1, u2, random_ids = rng.random(k), rng.random(k), rng.integers(0, VOCAB, k)
        expected = np.where(u1 < 0.8, MASK_ID, np.where(u2 < 0.5, labels, random_ids))
        np.testing.assert_array_equal(out["input_ids"][positions], expected)
        np.testing.assert_array_equal(out["masked_lm_positions"][:k], positions)
    assert pretraining.validate_mask_fractions(0.8, 0.1) == 0.5


@pytest.mark.parametrize("prob", [0.15, 0.3])
def test_masking_rate(prob):
    masker = _masker(masked_lm_prob=prob, max_predictions_per_seq=64)
    for i, e in enumerate(_synthetic_examples(200)):
        out = masker(e, index=i)
        expected = min(64, max(1, int(round(int(e["attention_mask"].sum()) * prob))))
        assert int(out["masked_lm_weights"].sum()) == expected


def _words(ids, attention):
    """[positions of one word] for the non-special attended tokens (a word: a start + its '##' pieces)."""
    words = []
    for position in np.flatnonzero((attention != 0) & ~np.isin(ids, SPECIALS)):
        if ids[position] in CONTINUATIONS and words and words[-1][-1] == position - 1:
            words[-1].append(int(position))
        else:
            words.append([int(position)])
    return words


def test_whole_word_masking_never_splits_a_word():
    masker = _masker(whole_word_mask=True, masked_lm_prob=0.2)
    multi_piece_words_masked = 0
    for i, e in enumerate(_synthetic_examples(300)):
        out = masker(e, index=i)
        chosen = set(out["masked_lm_positions"][out["masked_lm_weights"] > 0].tolist())
        for word in _words(e["input_ids"], e["attention_mask"]):
            hit = [p in chosen for p in word]
            assert all(hit) or not any(hit), (word, sorted(chosen))
            multi_piece_words_masked += len(word) > 1 and all(hit)
    assert multi_piece_words_masked > 100  # the synthetic rows do have multi-piece words, and they get masked
    # ... whereas token masking does split them.
    token_masker = _masker(masked_lm_prob=0.2)
    split = 0
    for i, e in enumerate(_synthetic_examples(300)):
        out = token_masker(e, index=i)
        chosen = set(out["masked_lm_positions"][out["masked_lm_weights"] > 0].tolist())
        split += sum(0 < sum(p in chosen for p in w) < len(w) for w in _words(e["input_ids"], e["attention_mask"]))
    assert split > 0


def test_same_seed_same_masks():
    examples = _synthetic_examples(20)
    for whole in (False, True):
        a, b, c = (_masker(seed=s, whole_word_mask=whole, mask_token_fraction=0.5, random_token_fraction=0.2)
                   for s in (11, 11, 12))
        outs = [[m(e, index=i)["input_ids"] for i, e in enumerate(examples)] for m in (a, b, c)]
        assert all(np.array_equal(x, y) for x, y in zip(outs[0], outs[1]))
        assert not all(np.array_equal(x, y) for x, y in zip(outs[0], outs[2]))


@pytest.mark.parametrize("kwargs,named", [
    (dict(mask_token_fraction=1.2), "mask_token_fraction"),
    (dict(random_token_fraction=-0.1), "random_token_fraction"),
    (dict(mask_token_fraction=0.7, random_token_fraction=0.4), "must be <= 1"),
    (dict(mask_token_fraction="0.8"), "mask_token_fraction"),
])
def test_bad_fractions_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        _masker(**kwargs)
    with pytest.raises(ValueError, match=named):
        pretraining.create_masked_lm_predictions(["[CLS]", "a", "[SEP]"], 0.15, 2, ["a"], random.Random(0), **kwargs)
    if any(isinstance(v, str) for v in kwargs.values()):
        return  # (a ConfigDict refuses a string for a float key itself)
    from bert_jax.training.data import masking_options
    c = _pretrain_config()
    c.data.update(kwargs)
    with pytest.raises(ValueError, match="config.data." + (named if "fraction" in named else "")):
        masking_options(c)


def test_config_switches_reach_the_text_pipeline(tmp_path):
    """config.data.{whole_word_mask, mask_token_fraction, random_token_fraction} reach the masker the trainer
    builds (the text path), and the defaults are today's masker."""
    from bert_jax.data import pipeline
    from bert_jax.tokenization import train_wordpiece
    from bert_jax.training import data as training_data
    c = _pretrain_config()
    assert (c.data.mask_token_fraction, c.data.random_token_fraction, c.data.whole_word_mask) == (0.8, 0.1, False)
    seen = []
    real = pipeline.make_text_mlm_loader

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("whole_word_mask", "mask_token_fraction", "random_token_fraction")})
        return real(*args, **kwargs)

    docs = [["the quick brown fox jumps", "over the lazy dog"], ["a second document here", "with two lines"],
            ["and a third one", "to split off for eval"]]
    text = tmp_path / "c.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    tokenizer = train_wordpiece([s for d in docs for s in d], vocab_size=60)
    tokenizer.save(str(tmp_path / "vocab"))
    c.objective = "mlm"
    c.data.update(source=f"text:{text}", vocab=str(tmp_path / "vocab"), seq_len=16, max_predictions=4,
                  global_batch_size=2, eval_fraction=0.3, whole_word_mask=True, mask_token_fraction=0.6,
                  random_token_fraction=0.2)
    pipeline_attr = training_data.pipeline.make_text_mlm_loader
    training_data.pipeline.make_text_mlm_loader = spy
    try:
        training_data.build_pretraining_data(c, tmp_path / "work")
    finally:
        training_data.pipeline.make_text_mlm_loader = pipeline_attr
    assert seen[0] == dict(whole_word_mask=True, mask_token_fraction=0.6, random_token_fraction=0.2)


# ------------------------------------------------------------------------------------------------ ELECTRA
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bert_jax.config import BertConfig  # noqa: E402
from bert_jax.training import electra  # noqa: E402


def _discriminator_config(**kw):
    return BertConfig(**{**dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=32, model_type="electra"), **kw})


def _numpy_electra_loss(gen_logits, ids, weights, rtd_logits, labels, attention, rtd_weight):
    """The paper's loss, written independently: mean MLM nll over the masked positions + rtd_weight * mean
    sigmoid BCE over the non-pad tokens."""
    g = gen_logits.astype(np.float64)
    log_probs = g - g.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ids[..., None], -1)[..., 0]
    mlm = (nll * weights).sum() / weights.sum()
    p = 1 / (1 + np.exp(-rtd_logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    active = attention == 1
    return mlm + rtd_weight * bce[active].mean()


def test_electra_loss_against_numpy():
    rng = np.random.default_rng(0)
    B, P, L, V = 3, 4, 10, 17
    gen_logits = rng.normal(size=(B, P, V)).astype(np.float32) * 3
    ids = rng.integers(0, V, (B, P))
    weights = (rng.random((B, P)) < 0.7).astype(np.float32)
    weights[0, 0] = 1
    rtd_logits = rng.normal(size=(B, L)).astype(np.float32) * 4
    labels = rng.integers(0, 2, (B, L))
    attention = (np.arange(L)[None, :] < np.array([[10], [6], [3]])).astype(np.int32)
    for weight in (50.0, 1.0, 0.0):
        got = float(electra.electra_loss(jnp.asarray(gen_logits), jnp.asarray(ids), jnp.asarray(weights),
                                         jnp.asarray(rtd_logits), jnp.asarray(labels), jnp.asarray(attention), weight))
        want = _numpy_electra_loss(gen_logits, ids, weights, rtd_logits, labels, attention, weight)
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (weight, got, want)


def test_rtd_labels_rule():
    """Replaced only where the discriminator's input differs from the original text: a sample equal to the
    original is "original"; padding entries of masked_positions (weight 0) write nothing."""
    original = jnp.array([[2, 10, 11, 12, 13, 3, 0, 0]])
    masked = original.at[0, jnp.array([1, 3, 4])].set(jnp.array([4, 4, 12]))  # [MASK], [MASK], a kept token
    positions = jnp.array([[1, 3, 4, 0]])
    weights = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    ids = jnp.array([[10, 12, 13, 0]])
    sampled = jnp.array([[10, 20, 21, 22]])  # position 1: the original back; 3 and 4: replacements; 0: padding
    corrupted, labels = electra.corrupt(masked, positions, weights, ids, sampled)
    np.testing.assert_array_equal(corrupted, [[2, 10, 11, 20, 21, 3, 0, 0]])
    np.testing.assert_array_equal(labels, [[0, 0, 0, 1, 1, 0, 0, 0]])


def test_generator_size_and_shared_embeddings():
    from flax import traverse_util
    from bert_jax.modeling import BertForReplacedTokenDetection, init_params
    d = _discriminator_config()
    g = electra.generator_config(d, 4)
    assert (g.hidden_size, g.num_attention_heads, g.intermediate_size, g.embedding_size) == (8, 1, 16, 32)
    params = init_params(electra.ElectraPretrainingModel(d, g))
    # The discriminator's params are exactly a BertForReplacedTokenDetection's; the generator has no embeddings.
    reference = init_params(BertForReplacedTokenDetection(d))
    assert jax.tree.structure(params["discriminator"]) == jax.tree.structure(reference)
    generator = traverse_util.flatten_dict(params["generator"])
    assert not any("embeddings" in k for k in generator) and ("bert", "embeddings_project", "kernel") in generator
    for bad, named in ((0, "generator_size_divisor"), (3, "does not divide"), (True, "generator_size_divisor")):
        with pytest.raises(ValueError, match=named):
            electra.generator_config(d, bad)


def _electra_batch(B=4, L=16, P=3, V=60, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (B, L)).astype(np.int32)
    attention = np.ones((B, L), np.int32)
    attention[1, 10:] = 0
    ids[attention == 0] = 0
    positions = np.stack([rng.choice(np.arange(1, 9), P, replace=False) for _ in range(B)]).astype(np.int32)
    labels = np.take_along_axis(ids, positions, 1)
    masked = ids.copy()
    np.put_along_axis(masked, positions, 4, 1)
    return {"input_ids": masked, "attention_mask": attention, "token_type_ids": np.zeros_like(ids),
            "masked_lm_positions": positions, "masked_lm_ids": labels,
            "masked_lm_weights": np.ones((B, P), np.float32)}


def test_sampling_is_reproducible_from_the_seed_and_the_generator_gets_gradients():
    from bert_jax.modeling import init_params
    d = _discriminator_config(num_hidden_layers=1)
    model = electra.ElectraPretrainingModel(d, electra.generator_config(d, 2))
    params = init_params(model)
    batch = {k: jnp.asarray(v) for k, v in _electra_batch(B=8, P=6).items()}

    @jax.jit
    def sample(key):
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           batch["masked_lm_positions"], batch["masked_lm_ids"], batch["masked_lm_weights"],
                           rngs={"sample": key}).sampled_ids
    np.testing.assert_array_equal(sample(jax.random.PRNGKey(3)), sample(jax.random.PRNGKey(3)))
    assert not np.array_equal(sample(jax.random.PRNGKey(3)), sample(jax.random.PRNGKey(4)))

    @jax.jit
    def grads_with(p, rtd_weight):
        def loss(p):
            sums = electra.batch_sums(model, p, batch, jax.random.PRNGKey(0), None)
            return electra.summarise(sums, *electra._denominators(batch), rtd_weight)["loss"]
        return jax.grad(loss)(p)
    grads = grads_with(params, 50.0)
    norm = lambda tree: float(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))
    # Both losses reach their model; the shared embeddings get the generator's MLM gradient too.
    assert norm(grads["generator"]) > 0 and norm(grads["discriminator"]["discriminator_predictions"]) > 0
    gen_only = grads_with(params, 0.0)
    assert norm(gen_only["discriminator"]["bert"]["embeddings"]) > 0
    assert norm(gen_only["discriminator"]["bert"]["encoder"]) == 0  # no gradient through the samples


def _electra_run_config(tmp_path, steps_total, **kw):
    from bert_jax.tokenization import train_wordpiece
    words = ("the function returns a list of values from the file and raises an error if the path does not "
             "exist while the class stores the name of each object in a table for later use").split()
    rs = np.random.RandomState(0)
    docs = ["\n".join(" ".join(rs.choice(words, rs.randint(5, 12))) + "." for _ in range(rs.randint(3, 7)))
            for _ in range(40)]
    text = tmp_path / "corpus.txt"
    if not text.exists():
        text.write_text("\n\n".join(docs) + "\n")
        train_wordpiece([str(text)], vocab_size=300).save(str(tmp_path / "vocab"))
    c = _pretrain_config()
    c.objective = "electra"
    c.data.update(source=f"text:{text}", vocab=str(tmp_path / "vocab"), vocab_size=300, seq_len=32, max_predictions=5,
                  global_batch_size=8, eval_batches=2, dupe_factor=1)
    c.optim.update(total_steps=steps_total, warmup_steps=2, learning_rate=2e-3)
    c.model.update(hidden_size=32, intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0)
    c.electra.generator_size_divisor = 2
    c.log_every, c.eval_every, c.checkpoint_every = 4, 0, 12
    c.async_checkpointing = False
    c.progress_bar = False
    c.update(kw)
    return c


@pytest.mark.slow
def test_electra_trains_resumes_and_exports(tmp_path):
    import json
    from bert_jax.training import trainer
    c = _electra_run_config(tmp_path, 24, eval_every=24)
    result = trainer.train_and_evaluate(c, tmp_path / "run")
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    assert {"mlm_accuracy", "rtd_accuracy", "rtd_loss", "mlm_loss"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
    assert {"rtd_accuracy", "mlm_accuracy"} <= set(result["eval"])

    # Resumed from its step-12 checkpoint, the run ends with the same params as the uninterrupted one.
    import shutil
    from bert_jax.training import checkpoints
    shutil.copytree(tmp_path / "run", tmp_path / "resumed", ignore=shutil.ignore_patterns("24", "final_metrics.json"))
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["12"]
    trainer.train_and_evaluate(_electra_run_config(tmp_path, 24, eval_every=24), tmp_path / "resumed")

    def final(workdir):
        ckpt = checkpoints.Checkpointer(str(workdir / "checkpoints"))
        assert ckpt.latest_step() == 24
        state, _ = ckpt.read(24)
        ckpt.close()
        return jax.tree.map(np.asarray, state["params"])
    jax.tree.map(np.testing.assert_array_equal, final(tmp_path / "resumed"), final(tmp_path / "run"))

    # The discriminator exports as transformers' ElectraForPreTraining, with the same logits.
    import torch
    import transformers
    from bert_jax import export as export_lib
    from bert_jax.modeling import BertForReplacedTokenDetection
    summary = export_lib.export(str(tmp_path / "run"), str(tmp_path / "hf"))
    assert summary["architecture"] == "ElectraForPreTraining" and summary["step"] == 24
    assert json.load(open(tmp_path / "hf" / "config.json"))["model_type"] == "electra"
    hf_model = transformers.ElectraForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    batch = _electra_batch(V=result["model"].config.vocab_size)
    discriminator = BertForReplacedTokenDetection(result["model"].config)
    ours = discriminator.apply({"params": final(tmp_path / "run")["discriminator"]}, batch["input_ids"],
                               batch["attention_mask"], batch["token_type_ids"]).logits
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                          attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
                          token_type_ids=torch.tensor(batch["token_type_ids"], dtype=torch.long)).logits.numpy()
    real = batch["attention_mask"] == 1
    assert np.max(np.abs(np.asarray(ours)[real] - theirs[real])) < 1e-5


@pytest.mark.slow
def test_electra_loss_on_8_devices_equals_1_device(tmp_path):
    import json
    import subprocess
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "electra_mesh_worker.py"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.load(open(tmp_path / "results.json"))
    reference = results.pop("1x1x1")
    assert len(results) == 3
    for mesh, losses in results.items():
        # Step 2's losses also check the update of step 1 (optimizer and sharded gradients). The two losses
        # within 1e-6; their sum mlm + 50 * rtd (~39) within 1e-6 relative (its fp32 ulp is 3.8e-6).
        for step, (got, want) in enumerate(zip(losses, reference)):
            for name in ("mlm_loss", "rtd_loss"):
                assert abs(got[name] - want[name]) <= 1e-6, (mesh, step, name, got, want)
            assert abs(got["loss"] - want["loss"]) <= 1e-6 * abs(want["loss"]), (mesh, step, got, want)


def test_objective_and_electra_keys_are_checked():
    from bert_jax.training import trainer
    c = _pretrain_config()
    c.objective = "electra"
    trainer._check_config(c)
    c.objective = "elektra"
    with pytest.raises(ValueError, match="config.objective"):
        trainer._check_config(c)
    c.objective = "electra"
    c.electra.rtd_weight = -1.0
    with pytest.raises(ValueError, match="config.electra.rtd_weight"):
        trainer._check_config(c)
    c.electra.rtd_weight = 50.0
    c.data.random_token_fraction = 0.5
    with pytest.raises(ValueError, match="config.data.mask_token_fraction"):
        trainer._check_config(c)


def test_electra_recipe_config():
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import electra as electra_config
    from bert_jax.training import trainer
    for size, (hidden, embedding, gen_hidden, gen_heads) in {"small": (256, 128, 64, 1), "base": (768, 768, 256, 4),
                                                            "large": (1024, 1024, 256, 4)}.items():
        c = electra_config.get_config(f"size={size}")
        model = trainer.build_model(c, trainer.build_model_config(c, 30522, 0))
        assert (model.config.hidden_size, model.config.embedding_size, model.config.model_type) == (
            hidden, embedding, "electra")
        assert (model.generator_config.hidden_size, model.generator_config.num_attention_heads) == (gen_hidden, gen_heads)
        assert (c.data.mask_token_fraction, c.data.random_token_fraction) == (0.85, 0.0)


def test_fill_mask_with_the_electra_generator(capsys):
    """The demo's fill-mask step runs on an ELECTRA run (its generator is the masked LM)."""
    import types
    from bert_jax.modeling import init_params
    from bert_jax.tokenization import train_wordpiece
    from bert_jax.training import trainer
    tokenizer = train_wordpiece(["the function returns a list", "the class stores a name"], vocab_size=60)
    d = _discriminator_config(num_hidden_layers=1, vocab_size=tokenizer.vocab_size)
    model = electra.ElectraPretrainingModel(d, electra.generator_config(d, 2))
    result = {"model": model, "state": types.SimpleNamespace(params=init_params(model)),
              "data": types.SimpleNamespace(tokenizer=tokenizer)}
    predictions = trainer.print_fill_mask(result, ["the [MASK] returns a list", "a [MASK]"], top_k=3)
    assert len(predictions) == 2 and all(len(p) == 3 for p in predictions)
    assert "fill-mask" in capsys.readouterr().out


def test_static_shards_say_when_config_asks_for_other_masks(tmp_path, caplog):
    """dynamic_masking=False keeps the shards' masks: a config asking for other masking switches is told so."""
    import logging
    from bert_jax.training import data as training_data
    examples = [_masker()(e, index=i) for i, e in enumerate(_synthetic_examples(4))]
    pretraining.write_examples(examples, str(tmp_path) + "/", metadata={"config": {"do_whole_word_mask": False}})
    masking = dict(whole_word_mask=False, mask_token_fraction=0.8, random_token_fraction=0.1)
    with caplog.at_level(logging.WARNING):
        training_data._check_static_masking(str(tmp_path), masking)
        assert not caplog.records
        training_data._check_static_masking(str(tmp_path), dict(masking, whole_word_mask=True))
    assert "do_whole_word_mask" in caplog.text and "dynamic_masking=True" in caplog.text


@pytest.mark.slow
def test_electra_gradient_accumulation_equals_the_whole_batch():
    """Each row's replacements come from its own key, split before the micro-batches: 2 micro-batches give the
    whole batch's loss and update (no dropout)."""
    import optax
    from bert_jax.modeling import init_params
    from bert_jax.training import steps
    d = _discriminator_config(num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = electra.ElectraPretrainingModel(d, electra.generator_config(d, 2))
    params = init_params(model)
    tx = optax.adam(1e-3)
    batch = {k: jnp.asarray(v) for k, v in _electra_batch(B=8, P=4).items()}
    results = []
    for micro in (1, 2):
        state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 rng=jax.random.PRNGKey(5))
        step = jax.jit(electra.make_train_step(model, tx, lambda s: 1e-3, micro_batches=micro))
        results.append(step(state, batch))
    (one, m1), (two, m2) = results
    for name in ("loss", "mlm_loss", "rtd_loss", "rtd_accuracy", "replaced_fraction"):
        assert abs(float(m1[name]) - float(m2[name])) <= 1e-6 * max(1.0, abs(float(m1[name]))), name
    assert float(m1["replaced_fraction"]) > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), one.params, two.params)


def test_aot_compiles_the_electra_step_with_the_configs_rtd_weight(tmp_path, monkeypatch):
    """`bert_jax.aot` builds the step the loop runs: the config's rtd_weight (not the paper's 50) and
    FLOPs that count the generator too."""
    from bert_jax import aot, flops
    from bert_jax.training import trainer
    seen = []
    real = electra.make_train_step
    monkeypatch.setattr(electra, "make_train_step", lambda *a, **kw: seen.append(kw["rtd_weight"]) or real(*a, **kw))
    c = _electra_run_config(tmp_path, 4)
    c.electra.rtd_weight = 7.0
    compiled, info = aot.compile_train_step(c, jax.devices()[:1], vocab_size=300)
    assert seen == [7.0]
    model_config = trainer.build_model_config(c, 300, 0)
    model = trainer.build_model(c, model_config)
    discriminator = flops.pretraining_step_flops(model_config, 32, 5, 8)
    generator = flops.pretraining_step_flops(model.generator_config, 32, 5, 8)
    assert info["model_flops_per_step"] == pytest.approx(discriminator + generator)
