"""Command-line commands that live apart from the stores they read (the audit half).

Each module exposes ``register_cli(subparsers)`` and is listed in
:data:`token_optimizer.cli.CLI_MODULES`. Nothing here is imported on the
plugin's hook/runtime path.
"""
