"""One module per command (train, test, predict, report, filter)."""
