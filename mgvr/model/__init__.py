"""Model layer: open_clip loading and encoding, and the pure scoring math.

Knows nothing of files or indexes."""
