"""Training: token-retrieval warm-up, multiplexed MLM pre-training, multiplexed GLUE fine-tuning and CoFi
structured pruning.

`prumux-deploy train warmup|pretrain|finetune|prune|all` (prumux_deploy/commands/train.py) runs the stages in
train/stages.py; each writes a checkpoint directory that `prumux-deploy export` reads.
"""
