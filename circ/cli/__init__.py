"""Command-line tools: circ-opt and circ-run."""
