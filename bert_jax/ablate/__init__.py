"""The ablation bench: variants of the encoder trained on an equal budget, then fine-tuned, compared.

    python -m bert_jax.ablate --workdir=/tmp/ablate --budget_seconds=120 --seeds=2
    python -m bert_jax.ablate --workdir=/tmp/ablate_flops --budget_flops=3e14 --variants=bert,preln,cramming

Each variant of the grid (configs/ablate.py: the pretraining demo and overrides or recipe config files)
pretrains on the embedded corpus for the same budget (`--budget_seconds`: the training loop's
`train_seconds`; `--budget_flops`: steps = budget / the variant's model FLOPs per step), then fine-tunes on
the embedded task (configs/finetune_demo.py from that pretraining workdir), each stage in its own
subprocess, in `<workdir>/<variant>/seed<k>/{pretrain,finetune}`. The workdir gets `ablation.md` and
`ablation.json` (params, FLOPs/token, tokens/s, steps, eval MLM accuracy at the budget, fine-tuning dev
accuracy; mean ± std over `--seeds`) and `ablation.png` (eval MLM accuracy against training seconds and
FLOPs). Every variant tokenizes with one vocab trained once (`<workdir>/vocab`). Re-running resumes.

Modules: `grid` (variants, overrides, budgets, FLOPs), `bench` (the runs), `child` (one stage in a
subprocess), `report` (table and plot), `cli`.
"""
