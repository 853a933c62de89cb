"""Checks the output of README command 1 (the main job): it finished its steps, its eval MLM accuracy beats the
unigram baseline it prints, and the fill-mask lines are there with predictions.

    python3 .ci/check_main_job.py LOG
"""

import ast
import json
import re
import sys

log = open(sys.argv[1], encoding="utf-8", errors="replace").read()
final = re.findall(r"process 0 final metrics: (\{.*\})", log)
if not final:
    sys.exit("main job: no 'process 0 final metrics' line: it did not finish")
metrics = json.loads(final[-1])
steps = re.findall(r"step (\d+)/(\d+)", log)
if not steps or steps[-1][0] != steps[-1][1] or metrics.get("step") != int(steps[-1][1]):
    sys.exit(f"main job: stopped at step {metrics.get('step')} of {steps[-1][1] if steps else '?'}")
accuracy, baseline = metrics["eval"]["mlm_accuracy"], metrics["eval"]["unigram_baseline_accuracy"]
if not accuracy > baseline:
    sys.exit(f"main job: eval MLM accuracy {accuracy:.4f} does not beat the unigram baseline {baseline:.4f}")
fills = re.findall(r"fill-mask: '(.*)' -> (\[.*\])", log)
if len(fills) < 2 or not all(ast.literal_eval(tokens) for _, tokens in fills):
    sys.exit(f"main job: expected fill-mask lines with predictions, got {fills}")
print(f"main job ok: {metrics['step']} steps, eval MLM accuracy {accuracy:.3f} > unigram baseline {baseline:.3f}; "
      + "; ".join(f"{text!r} -> {tokens}" for text, tokens in fills))
