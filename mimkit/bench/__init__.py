"""``mimkit bench``: the training-step benchmark (``mimkit.bench.cli``), in pieces: clocks, step, measure."""
