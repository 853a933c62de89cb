"""The README's main job: a tiny BERT (MLM + NSP) pretrained on the embedded corpus (docstrings of
the Python standard library) in a few minutes on a CPU, then fill-mask.

python -m bert_jax.main --config=configs/demo.py --workdir=/tmp/bert_jax_demo
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402  (configs/ is not a package; configs are plain files)


def get_config(arg: str = ""):
    c = pretrain.base_config()
    c.model = pretrain.model_config("tiny")
    c.model.update(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                   max_position_embeddings=128, attention_impl="xla", hidden_dropout_prob=0.1)
    c.data.update(source="stdlib", vocab_size=4000, seq_len=64, max_predictions=10, global_batch_size=32,
                  dupe_factor=2, eval_batches=8)
    c.optim.update(optimizer="adamw", learning_rate=2e-3, warmup_steps=100, total_steps=1500, weight_decay=0.01)
    c.log_every, c.eval_every, c.checkpoint_every = 100, 500, 500
    c.fill_mask = ["the function returns a [MASK] of the arguments.", "raise a [MASK] if the file does not exist."]
    for key, value in pretrain.parse_arg(arg).items():
        if key == "steps":
            c.optim.total_steps = int(value)
    return c
