"""bert_jax entry point.

Until the config-driven trainer lands, this runs the embedded demo: a tiny BERT pretrained on the
built-in corpus, fill-mask, and a Hugging Face checkpoint written to --workdir.
"""

from absl import app, flags

flags.DEFINE_string("workdir", "/tmp/bert_jax_demo", "Where checkpoints and outputs go.")
flags.DEFINE_integer("steps", 600, "Training steps of the demo.")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from bert_jax import demo
    demo.run(FLAGS.workdir, steps=FLAGS.steps, seed=FLAGS.seed)


if __name__ == "__main__":
    app.run(main)
