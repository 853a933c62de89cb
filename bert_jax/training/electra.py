"""ELECTRA pretraining (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as Discriminators Rather
Than Generators"): a small masked-LM generator fills the masked positions with tokens sampled from its
softmax, and the discriminator (`BertForReplacedTokenDetection`, transformers' `ElectraForPreTraining`)
learns, at every non-pad token, whether the token is the original or a replacement.

    loss = mlm_loss(generator) + rtd_weight * rtd_loss(discriminator)      (rtd_weight = 50, the paper's λ)

What this follows from the paper and google-research/electra:
  * Generator size: hidden size, heads and intermediate size of the discriminator divided by
    `generator_size_divisor` (same depth). The paper finds generators 1/4-1/2 of the discriminator's size
    best (Section 3.2, Fig. 3; ELECTRA-Small and -Large use 1/4, -Base 1/3); the default divisor is 4.
  * Shared embeddings: the generator reads the discriminator's embedding module (word, position and
    token-type tables and the embedding LayerNorm, as the official code shares the whole `embeddings`
    scope), projected to its own width by its `embeddings_project` when narrower; its MLM decoder is
    tied to the shared word embeddings. The generator's params therefore hold no `embeddings`.
  * Replacements are drawn from the generator's softmax (temperature 1, a categorical / Gumbel-max draw
    from the step's rng, one key per row so micro-batching and sharding draw the same samples) with no
    gradient into the discriminator input (the sample is discrete; the logits are also stop-gradient'ed).
    A sampled token equal to the original is labelled "original".
  * The RTD loss is the mean binary cross-entropy over the non-pad tokens (attention_mask == 1, [CLS]
    and [SEP] included), the MLM loss the mean over the masked positions (`masked_lm_weights`).

Every masked position (whatever the masker put there: [MASK], a random or the kept token) is filled
with the generator's sample in the discriminator's input.

Losses are normalised by the whole batch's counts before the micro-batch split (as `steps.py`), so
gradient accumulation gives the gradient of the whole batch.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from bert_jax.config import BertConfig
from bert_jax.modeling.heads import BertForMaskedLM
from bert_jax.modeling.rtd import BertForReplacedTokenDetection
from bert_jax.training import steps

Array = jax.Array

DEFAULT_GENERATOR_SIZE_DIVISOR = 4
DEFAULT_RTD_WEIGHT = 50.0
EVAL_SAMPLE_SEED = 0  # evaluation samples replacements from this fixed key: every evaluation is comparable


def generator_config(discriminator: BertConfig, divisor: int) -> BertConfig:
    """The generator's config: `discriminator`'s with hidden size, heads and intermediate size divided by
    `divisor`, reading the discriminator's embeddings (its `embedding_size` = their width)."""
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"config.electra.generator_size_divisor must be an integer >= 1, got {divisor!r}")
    if discriminator.hidden_size % divisor:
        raise ValueError(f"config.electra.generator_size_divisor={divisor} does not divide the discriminator's "
                         f"hidden_size={discriminator.hidden_size}")
    hidden = discriminator.hidden_size // divisor
    heads = max(1, discriminator.num_attention_heads // divisor)
    if hidden % heads:
        raise ValueError(f"config.electra.generator_size_divisor={divisor}: the generator's hidden size {hidden} is "
                         f"not a multiple of its {heads} attention heads")
    return discriminator.replace(hidden_size=hidden, num_attention_heads=heads,
                                 intermediate_size=max(1, discriminator.intermediate_size // divisor),
                                 embedding_size=discriminator.embedding_size or discriminator.hidden_size)


@flax.struct.dataclass
class ElectraPretrainingOutput:
    """generator_logits [B, P, V] at the masked positions; sampled_ids [B, P]; corrupted_ids [B, L] (the
    discriminator's input); rtd_labels [B, L] (1 = replaced); rtd_logits [B, L] (> 0: "replaced")."""

    generator_logits: Optional[Array] = None
    sampled_ids: Optional[Array] = None
    corrupted_ids: Optional[Array] = None
    rtd_labels: Optional[Array] = None
    rtd_logits: Optional[Array] = None


def _with_embeddings(variables, embeddings):
    """The generator's variables with the shared `bert/embeddings` put in."""
    variables = {k: dict(v) for k, v in variables.items()}
    params = variables.setdefault("params", {})
    params["bert"] = {**dict(params.get("bert", {})), "embeddings": embeddings}
    return variables


def _without_embeddings(variables):
    """The generator's variables without `bert/embeddings` (they live in the discriminator)."""
    variables = {k: dict(v) for k, v in variables.items()}
    if "params" in variables and "bert" in variables["params"]:
        variables["params"]["bert"] = {k: v for k, v in dict(variables["params"]["bert"]).items()
                                       if k != "embeddings"}
    return variables


def replace_masked(input_ids: Array, masked_positions: Array, masked_weights: Array, values: Array
                   ) -> Tuple[Array, Array]:
    """(input_ids [B, L] with `values` [B, P] written at the real masked positions (weight > 0), which
    [B, L] bool). One-hot over [B, P, L] rather than a scatter: padding entries of masked_positions
    (weight 0, usually position 0) can repeat, and a scatter's order among duplicates is unspecified."""
    hit = (masked_positions[:, :, None] == jnp.arange(input_ids.shape[1])[None, None, :]) \
        & (masked_weights[:, :, None] > 0)
    masked = jnp.any(hit, axis=1)
    written = jnp.sum(jnp.where(hit, values[:, :, None].astype(input_ids.dtype), 0), axis=1)
    return jnp.where(masked, written, input_ids), masked


def corrupt(input_ids: Array, masked_positions: Array, masked_lm_weights: Array, masked_lm_ids: Array,
            sampled_ids: Array) -> Tuple[Array, Array]:
    """(the discriminator's input [B, L]: input_ids with the samples [B, P] at the real masked positions,
    RTD labels [B, L]: 1 where that input differs from the original text, the masked_lm_ids [B, P] put
    back). The paper's rule: a sample equal to the original token is labelled "original" (0)."""
    original, _ = replace_masked(input_ids, masked_positions, masked_lm_weights, masked_lm_ids)
    corrupted, _ = replace_masked(input_ids, masked_positions, masked_lm_weights, sampled_ids)
    return corrupted, (corrupted != original).astype(jnp.int32)


class ElectraPretrainingModel(nn.Module):
    """Generator + discriminator with shared embeddings; params `{"generator": ..., "discriminator": ...}`,
    the discriminator's being exactly those of `BertForReplacedTokenDetection(config)`.

    `config` is the discriminator's, `generator_config` the generator's (`generator_config(config, d)`).
    Called with the masked batch (input_ids [B, L] with the masker's replacements, masked_positions,
    masked_lm_ids, masked_lm_weights [B, P]) and a `sample` rng; without masked_positions (init) the
    discriminator reads input_ids as given."""

    config: BertConfig
    generator_config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, masked_positions=None,
                 masked_lm_ids=None, masked_lm_weights=None, sample_keys=None, *, deterministic: bool = True
                 ) -> ElectraPretrainingOutput:
        """`sample_keys` [B, key]: one PRNG key per row for the replacements (default: split from the
        `sample` rng), so that a row's sample does not depend on how the batch is split or sharded."""
        discriminator = BertForReplacedTokenDetection(self.config, name="discriminator")
        if self.is_initializing():  # the shared embeddings exist before the generator reads them
            discriminator(input_ids, attention_mask, token_type_ids, deterministic=True)
        if masked_positions is None:
            if self.is_initializing():
                self._generator()(input_ids, attention_mask, token_type_ids, deterministic=True)
            out = discriminator(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
            return ElectraPretrainingOutput(rtd_logits=out.logits, corrupted_ids=input_ids)
        generator = self._generator()
        gen_logits = generator(input_ids, attention_mask, token_type_ids, masked_positions=masked_positions,
                               deterministic=deterministic).logits  # [B, P, V]
        if sample_keys is None:
            sample_keys = jax.random.split(self.make_rng("sample"), input_ids.shape[0])
        sampled = jax.vmap(lambda key, logits: jax.random.categorical(key, logits, axis=-1))(
            sample_keys, jax.lax.stop_gradient(gen_logits.astype(jnp.float32)))  # [B, P]
        weights = masked_lm_weights if masked_lm_weights is not None else jnp.ones(masked_positions.shape)
        corrupted, labels = corrupt(input_ids, masked_positions, weights, masked_lm_ids, sampled)
        rtd_logits = discriminator(corrupted, attention_mask, token_type_ids, deterministic=deterministic).logits
        return ElectraPretrainingOutput(generator_logits=gen_logits, sampled_ids=sampled, corrupted_ids=corrupted,
                                        rtd_labels=labels, rtd_logits=rtd_logits)

    def _generator(self) -> nn.Module:
        shared = self.variables["params"]["discriminator"]["bert"]["embeddings"]
        generator_class = nn.map_variables(
            BertForMaskedLM, "params", trans_in_fn=lambda v: _with_embeddings(v, shared),
            trans_out_fn=_without_embeddings, init=self.is_initializing(), mutable=self.is_initializing())
        return generator_class(self.generator_config, name="generator")


# ------------------------------------------------------------------------------------------- losses
def electra_sums(output: ElectraPretrainingOutput, masked_lm_ids: Array, masked_lm_weights: Array,
                 attention_mask: Array) -> Dict[str, Array]:
    """Unnormalised sums of one (micro-)batch: generator MLM nll / correct over the masked positions
    (weights), discriminator BCE / correct over the non-pad tokens, and the counts."""
    logits = output.generator_logits.astype(jnp.float32)
    ids, weights = masked_lm_ids, masked_lm_weights.astype(jnp.float32)
    # Invalid ids (counted by the loop's data checks) are left out, not gathered out of bounds into NaN.
    valid = (ids >= 0) & (ids < logits.shape[-1])
    ids, weights = jnp.where(valid, ids, 0), jnp.where(valid, weights, 0.0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    x, y = output.rtd_logits.astype(jnp.float32), output.rtd_labels.astype(jnp.float32)
    # max(x, 0) - x y + log(1 + exp(-|x|)): BCE(sigmoid(x), y) without overflow (rtd.py's formula).
    bce = jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    active = (attention_mask == 1).astype(jnp.float32)
    return {"mlm_nll": jnp.sum(nll * weights),
            "mlm_correct": jnp.sum((jnp.argmax(logits, -1) == ids) * weights),
            "rtd_nll": jnp.sum(bce * active),
            "rtd_correct": jnp.sum(((x > 0) == (y > 0)) * active),
            "replaced": jnp.sum(y * active)}


def _denominators(batch) -> Tuple[Array, Array]:
    """(masked positions, non-pad tokens) of the whole batch, at least 1."""
    return (jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1.0),
            jnp.maximum(jnp.sum((batch["attention_mask"] == 1).astype(jnp.float32)), 1.0))


def summarise(sums: Dict[str, Array], mlm_den: Array, token_den: Array, rtd_weight: float) -> Dict[str, Array]:
    """loss = mlm_loss + rtd_weight * rtd_loss, with the accuracies and the replaced fraction."""
    metrics = {"mlm_loss": sums["mlm_nll"] / mlm_den, "mlm_accuracy": sums["mlm_correct"] / mlm_den,
               "rtd_loss": sums["rtd_nll"] / token_den, "rtd_accuracy": sums["rtd_correct"] / token_den,
               "replaced_fraction": sums["replaced"] / token_den}
    metrics["loss"] = metrics["mlm_loss"] + rtd_weight * metrics["rtd_loss"]
    return metrics


def electra_loss(generator_logits: Array, masked_lm_ids: Array, masked_lm_weights: Array, rtd_logits: Array,
                 rtd_labels: Array, attention_mask: Array, rtd_weight: float = DEFAULT_RTD_WEIGHT) -> Array:
    """The ELECTRA loss of fixed logits: generator_logits [B, P, V], masked_lm_ids / weights [B, P],
    rtd_logits / rtd_labels / attention_mask [B, L] -> scalar."""
    out = ElectraPretrainingOutput(generator_logits=generator_logits, rtd_logits=rtd_logits, rtd_labels=rtd_labels)
    sums = electra_sums(out, masked_lm_ids, masked_lm_weights, attention_mask)
    batch = {"masked_lm_weights": masked_lm_weights, "attention_mask": attention_mask}
    return summarise(sums, *_denominators(batch), rtd_weight)["loss"]


def batch_sums(model: ElectraPretrainingModel, params, batch: Dict[str, Array], sample_rng: Array,
               dropout_rng: Optional[Array]) -> Dict[str, Array]:
    """`electra_sums` of the model on one (micro-)batch; replacements from the batch's `sample_keys`
    ([B, key], one per row) if it has them, else from `sample_rng`; dropout when `dropout_rng` is given."""
    rngs = {} if sample_rng is None else {"sample": sample_rng}
    if dropout_rng is not None:
        rngs["dropout"] = dropout_rng
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                      batch["masked_lm_positions"], batch["masked_lm_ids"], batch["masked_lm_weights"],
                      batch.get("sample_keys"), deterministic=dropout_rng is None, rngs=rngs)
    return electra_sums(out, batch["masked_lm_ids"], batch["masked_lm_weights"], batch["attention_mask"])


def make_train_step(model: ElectraPretrainingModel, tx: optax.GradientTransformation, schedule: Callable, *,
                    rtd_weight: float = DEFAULT_RTD_WEIGHT, micro_batches: int = 1, skip_nonfinite: bool = False
                    ) -> Callable[[steps.TrainState, Dict[str, Array]], Tuple[steps.TrainState, Dict]]:
    """`train_step(state, batch) -> (state, metrics)` (the loop's contract, as `steps.make_train_step`).
    Replacements and dropout draw from `fold_in(state.rng, step)`, so a step is reproducible from the seed;
    each row's replacements from its own key, split before the micro-batches, so accumulation over
    micro-batches samples what the whole batch would."""

    def train_step(state: steps.TrainState, batch: Dict[str, Array]):
        mlm_den, token_den = _denominators(batch)
        step_rng = jax.random.fold_in(state.rng, state.step)
        sample_rng, step_rng = jax.random.split(step_rng)
        batch = dict(batch, sample_keys=jax.random.split(sample_rng, batch["input_ids"].shape[0]))

        def grads_of(micro, index):
            dropout_rng = jax.random.fold_in(step_rng, index)

            def loss_fn(params):
                sums = batch_sums(model, params, micro, None, dropout_rng)
                return summarise(sums, mlm_den, token_den, rtd_weight)["loss"], sums
            (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return grads, sums

        grads, sums = steps.sum_over_micro_batches(grads_of, batch, micro_batches)
        metrics = summarise(sums, mlm_den, token_den, rtd_weight)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step), finite=finite.astype(jnp.float32))
        return steps.apply_gradients(state, grads, tx, finite, skip_nonfinite), metrics

    return train_step


def make_eval_step(model: ElectraPretrainingModel) -> Callable[[Any, Dict[str, Array]], Dict[str, Array]]:
    """`eval_step(params, batch) -> sums` (no dropout; replacements from a fixed key)."""

    def eval_step(params, batch):
        sums = batch_sums(model, params, batch, jax.random.PRNGKey(EVAL_SAMPLE_SEED), None)
        sums["mlm_weight"] = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
        sums["tokens"] = jnp.sum((batch["attention_mask"] == 1).astype(jnp.float32))
        return sums

    return eval_step


def summarise_eval(total: Dict[str, Array], rtd_weight: float = DEFAULT_RTD_WEIGHT) -> Dict[str, float]:
    return {k: float(v) for k, v in summarise(total, jnp.maximum(total["mlm_weight"], 1.0),
                                              jnp.maximum(total["tokens"], 1.0), rtd_weight).items()}
