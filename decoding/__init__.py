"""CTC decoding, between training (which makes log-probabilities) and the outputs: greedy decoding
and exact scoring (``ctc``), a batched prefix beam search in torch for CPU and GPU (``search``)
behind ctcdecode's interface (``decoder``), and phone n-gram language models in ARPA form (``lm``).
Depends on ``pipeline`` (the symbol inventories) only."""

from .ctc import (check_lengths, ctc_log_likelihood, default_labels, greedy_decode, hypotheses_to_codes,
                  prune_probs, restrict_to_labels)
from .decoder import BLANK_SKIP, CTCBeamDecoder, beam_decode, load_lm
from .search import Result, SearchOptions

__all__ = [
    "BLANK_SKIP", "CTCBeamDecoder", "Result", "SearchOptions", "beam_decode", "check_lengths",
    "ctc_log_likelihood", "default_labels", "greedy_decode", "hypotheses_to_codes", "load_lm", "prune_probs",
    "restrict_to_labels",
]
