"""python -m bert_jax.ablate: the ablation bench (see bert_jax/ablate/__init__.py)."""

from absl import app

from bert_jax.ablate.cli import main

if __name__ == "__main__":
    app.run(main)
