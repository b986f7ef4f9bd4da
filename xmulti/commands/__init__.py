"""One module per ``xmulti`` subcommand, each with ``register(subparsers)``.

Modules import heavy libraries inside their ``run`` function so ``xmulti --help`` stays fast.
"""
