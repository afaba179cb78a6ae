"""``python -m cpfs.distributed_train``: the documented torchrun entry point, kept where users and their torchrun
commands call it. The code is ``cpfs.training.distributed_train``."""

from cpfs.training.distributed_train import main

if __name__ == "__main__":
    raise SystemExit(main())
