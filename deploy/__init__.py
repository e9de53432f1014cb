"""Sampling CLI, TF Serving-compatible HTTP server, demo page and launch files."""
