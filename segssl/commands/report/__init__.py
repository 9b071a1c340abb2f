"""The report command: tables, paired statistics and plots over run folders."""
