"""Training and evaluation: datasets, frame cache, train loop, metrics, synthetic corpus.

`mgvr.training.commands.register(app)` adds the `train`, `eval` and `demo` commands.
"""
