"""Runs transformers' PyTorch BERT as the numerical reference.

Used two ways:
- in-process with the installed transformers 5 (`run_case`), and
- as a script under transformers 4.57 (`python tests/hf_reference.py SPEC.json OUT_DIR` with
  PYTHONPATH=.legacy_hf), for what transformers 5 removed from BERT: relative position embeddings
  and head_mask.

A case is a dict: name, model (transformers class name), config (BertConfig kwargs), seed, inputs
(name -> nested lists), call_kwargs. Each case writes `save_pretrained` to OUT_DIR/<name> and
returns its outputs flattened to numpy arrays: `logits`, `hidden_states.0`, ...
"""

import json
import os
import sys

import numpy as np

def flatten_outputs(out) -> dict:
    """ModelOutput / dataclass -> {field or field.i: np.ndarray}, Nones dropped."""
    items = out.items() if hasattr(out, "items") else ((k, getattr(out, k)) for k in out.__dataclass_fields__)
    flat = {}
    for key, value in items:
        if value is None or key in ("past_key_values", "cache"):
            continue
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                if v is not None:
                    flat[f"{key}.{i}"] = _to_numpy(v)
        else:
            flat[key] = _to_numpy(value)
    return flat


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().float().numpy()
    return np.asarray(x, dtype=np.float32)


def run_case(case: dict, out_dir: str) -> dict:
    import torch
    import transformers

    torch.manual_seed(case.get("seed", 0))
    config = transformers.BertConfig(**case["config"])
    config._attn_implementation = "eager"  # the only implementation that returns attentions everywhere
    model = getattr(transformers, case["model"])(config).eval()
    path = os.path.join(out_dir, case["name"])
    model.save_pretrained(path)
    inputs = {}
    for key, value in case["inputs"].items():
        arr = np.asarray(value)  # integer arrays are ids/labels, float ones are embeddings/regression targets
        inputs[key] = torch.tensor(arr, dtype=torch.long if arr.dtype.kind in "iu" else torch.float32)
    with torch.no_grad():
        out = model(**inputs, **case.get("call_kwargs", {}))
    return flatten_outputs(out)


def main(spec_path: str, out_dir: str) -> None:
    with open(spec_path) as f:
        cases = json.load(f)
    for case in cases:
        outputs = run_case(case, out_dir)
        np.savez(os.path.join(out_dir, case["name"], "outputs.npz"), **outputs)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
