"""genre-tagger training: datasets, architectures, training, evaluation and export (needs the `train` extra)."""
