"""Stage 2 of phonerec: stream shards, train the CNN + BiLSTM CTC model, decode."""
