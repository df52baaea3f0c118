"""One module per `condnet` subcommand. Each has `register(subparsers)` that adds its parser and
sets `run=function(args) -> exit code`. Handlers parse and call the library, nothing more."""

COMMANDS = [
    "models",
    "profile",
    "train",
    "evaluate",
    "data",
    "reproduce",
    "routing",
    "export",
    "predict",
    "bench",
    "kernels",
    "config",
]
