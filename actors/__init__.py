"""A small typed actor runtime on plain threads."""
