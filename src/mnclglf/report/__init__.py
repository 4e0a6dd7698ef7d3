"""Reports built from result files only: tables, verdicts, plots (no training imports)."""
