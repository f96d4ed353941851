"""The command line on top of the stages: corpora (0), pipeline (1), training (2)."""
