"""One module per ``eegs`` subcommand."""
