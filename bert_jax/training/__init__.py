"""Training: one loop (`loop.py`) that pretraining (`trainer.py`) and fine-tuning (`finetune.py`) plug into."""
