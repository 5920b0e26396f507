"""One module per ``nnk`` subcommand (click lives here and in ``nnkcli.cli`` only)."""
