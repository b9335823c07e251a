"""Command-line analysis tools (``python -m frcnn.tools.<name>``)."""
