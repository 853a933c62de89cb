"""`python -m bert_jax.benchmark`: runs the command line of `bert_jax.benchmark.cli` on absl's global flags."""

from absl import app, flags

from bert_jax.benchmark.cli import define_flags, main

if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: main(argv, flags.FLAGS) and None)
