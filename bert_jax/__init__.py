"""bert_jax: BERT in JAX/Flax, exact against the reference, with Hugging Face checkpoint interop.

Public names are imported lazily so that `import bert_jax.tokenization` (or the data tools) does not
pay for importing jax/flax.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BertConfig": "bert_jax.config",
    "BertModel": "bert_jax.modeling",
    "BertForPreTraining": "bert_jax.modeling",
    "BertForMaskedLM": "bert_jax.modeling",
    "BertForCausalLM": "bert_jax.modeling",
    "BertForNextSentencePrediction": "bert_jax.modeling",
    "BertForSequenceClassification": "bert_jax.modeling",
    "BertForMultipleChoice": "bert_jax.modeling",
    "BertForTokenClassification": "bert_jax.modeling",
    "BertForQuestionAnswering": "bert_jax.modeling",
    "BertForReplacedTokenDetection": "bert_jax.modeling",
    "MODEL_CLASSES": "bert_jax.modeling",
    "init_params": "bert_jax.modeling",
    "init_cache": "bert_jax.modeling",
    "generate": "bert_jax.modeling.generation",
    "load_hf_checkpoint": "bert_jax.hf",
    "save_hf_checkpoint": "bert_jax.hf",
    "load_tf1_checkpoint": "bert_jax.tf1",
    "BertTokenizer": "bert_jax.tokenization",
    "train_wordpiece": "bert_jax.wordpiece",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
