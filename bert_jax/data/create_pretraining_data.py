r"""Creates BERT masked-LM / next-sentence pre-training data as ArrayRecord shards (google-research recipe).

    python -m bert_jax.data.create_pretraining_data \
        --input='corpus/*.txt,extra.txt' --output=out_dir/ --vocab=vocab.txt \
        --max_seq_length=128 --max_predictions_per_seq=20 --masked_lm_prob=0.15 --short_seq_prob=0.1 \
        --dupe_factor=10 --random_seed=12345 --num_shards=8 [--do_whole_word_mask] [--nodo_lower_case] \
        [--mask_token_fraction=0.8 --random_token_fraction=0.1]

Input: one sentence per line, blank lines between documents. Output: `{prefix}.array_record-0000i-of-0000N`
and `{prefix}.features.json` (`--output` a directory -> prefix `DIR/pretraining`); read them back with
`bert_jax.data.pretraining.PretrainingDataSource`. See `bert_jax/data/pretraining.py` for the record format.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from bert_jax.data import pretraining

FLAGS = flags.FLAGS

flags.DEFINE_string("input", None, "Input text file(s): comma-separated list of files or glob patterns.")
flags.DEFINE_string("output", None, "Output directory (existing, or ending in '/'; shards are then named "
                    "DIR/pretraining.array_record-*) or a file prefix for the shards.")
flags.DEFINE_string("vocab", None, "The vocab.txt the BERT model is trained with.")
flags.DEFINE_bool("do_lower_case", True, "Lower-case the input (True for uncased models, False for cased).")
flags.DEFINE_bool("do_whole_word_mask", False, "Mask whole words instead of individual WordPieces.")
flags.DEFINE_integer("max_seq_length", 128, "Maximum sequence length.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Maximum number of masked LM predictions per sequence.")
flags.DEFINE_float("masked_lm_prob", 0.15, "Masked LM probability.")
flags.DEFINE_float("mask_token_fraction", 0.8, "Fraction of the predicted positions replaced by [MASK].")
flags.DEFINE_float("random_token_fraction", 0.1, "Fraction of the predicted positions replaced by a random token "
                   "(the rest keep their token).")
flags.DEFINE_float("short_seq_prob", 0.1, "Probability of creating sequences shorter than the maximum length.")
flags.DEFINE_integer("dupe_factor", 10, "Number of times to duplicate the input data (with different masks).")
flags.DEFINE_integer("random_seed", 12345, "Random seed for data generation.")
flags.DEFINE_integer("num_shards", 1, "Number of ArrayRecord output shards.")
flags.DEFINE_bool("progress", True, "Show progress bars.")


def load_tokenizer(vocab: str, do_lower_case: bool = True):
    """`bert_jax.tokenization.BertTokenizer` for `vocab`; ValueError naming the file if it is missing."""
    if not vocab:
        raise ValueError("--vocab is required")
    if not os.path.isfile(vocab):
        raise ValueError(f"--vocab file {vocab!r} does not exist")
    from bert_jax.tokenization import BertTokenizer
    return BertTokenizer.from_vocab(vocab, lowercase=do_lower_case)


def run(input, output, vocab, *, do_lower_case=True, tokenizer=None, **kwargs) -> list[str]:
    """Programmatic entry point; `kwargs` are `write_pretraining_data`'s options. Returns the shard paths."""
    if not input:
        raise ValueError("--input is required")
    if not output:
        raise ValueError("--output is required")
    if tokenizer is None:
        tokenizer = load_tokenizer(vocab, do_lower_case)
    return pretraining.write_pretraining_data(input, output, tokenizer, **kwargs)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    run(FLAGS.input, FLAGS.output, FLAGS.vocab, do_lower_case=FLAGS.do_lower_case,
        max_seq_length=FLAGS.max_seq_length, max_predictions_per_seq=FLAGS.max_predictions_per_seq,
        masked_lm_prob=FLAGS.masked_lm_prob, short_seq_prob=FLAGS.short_seq_prob, dupe_factor=FLAGS.dupe_factor,
        do_whole_word_mask=FLAGS.do_whole_word_mask, random_seed=FLAGS.random_seed, num_shards=FLAGS.num_shards,
        show_progress=FLAGS.progress, mask_token_fraction=FLAGS.mask_token_fraction,
        random_token_fraction=FLAGS.random_token_fraction)


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output", "vocab"])
    app.run(main)
