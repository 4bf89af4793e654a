"""The command families of `prumux-deploy`, one module each (as accelerate's commands are):

    model.py     init, import, compact, inspect    checkpoints: create, import, fold, look inside
    export.py    export, triton                    engines and Triton model repositories
    validate.py  validate                          engine against PyTorch on task data: the release gate
    predict.py   predict                           classify texts with an engine
    bench.py     bench                             throughput and latency, side by side
    auto.py      auto collect|fit|predict|cv|compare|plot
                                                   Auto-PruMUX
    train.py     train warmup|finetune|prune|all   training

Each module defines plain click commands and registers nothing; prumux_deploy/cli.py owns the group and
adds them. Commands parse options and print; the work is done by library functions that raise
PruMuxError in library terms (parameter names in backticks, which the group shows as the command's flags).
"""
