"""Decoding moved to the ``decoding`` package (beside ``training``); this module re-exports its
public API so that ``from training.decode import ...`` keeps working."""

from decoding import (BLANK_SKIP, DECODERS, CTCBeamDecoder, beam_decode, ctc_log_likelihood, greedy_decode,  # noqa: F401
                      hypotheses_to_codes, load_lm, prune_probs, restrict_to_labels)

__all__ = ["BLANK_SKIP", "DECODERS", "CTCBeamDecoder", "beam_decode", "ctc_log_likelihood", "greedy_decode",
           "hypotheses_to_codes", "load_lm", "prune_probs", "restrict_to_labels"]
