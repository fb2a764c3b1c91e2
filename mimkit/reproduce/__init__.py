"""The papers' comparisons at small scale, resumable: ``mimkit reproduce`` (``mimkit.reproduce.cli``)."""
