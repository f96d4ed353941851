"""Stage 0: corpora in the raw layout (a random one for tests and benchmarks, synthesized speech for the demo)."""
