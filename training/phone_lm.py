"""`phonerec lm`: a phone n-gram LM over the training split's transcripts, read from the shards
(a folder or a URL), estimated by ``decoding.lm`` and written as an ARPA file."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from decoding.lm import estimate, write_arpa
from pipeline import manifest as mf
from pipeline.atomic import ensure_writable
from pipeline.errors import PhonerecError

from .data import ShardSource, read_shards


def phone_sequences(shards, splits: str, source: ShardSource | None = None, progress: bool = True):
    """(inventory, every transcript of `splits` as a list of symbols), shard by shard."""
    source = source or ShardSource()
    m = mf.load_many(shards, splits, source.policy)
    if not m.labelled:
        raise PhonerecError(f"split(s) {splits} in {shards} have no transcripts: an LM needs a labelled split")
    symbols = m.inventory.symbols
    out = []
    for s in tqdm(range(len(m.shards)), desc="read transcripts", unit="shard", disable=not progress, leave=False):
        for _, (_, labels) in sorted(read_shards(m, [s], source).items()):
            out.append([symbols[int(c)] for c in labels])
    return m.inventory, out


def build_lm(shards, splits: str, order: int, out: str | Path, source: ShardSource | None = None,
             progress: bool = True) -> dict:
    """Estimate an interpolated Kneser-Ney phone LM of `order` and write it to `out` (ARPA)."""
    ensure_writable(Path(out).parent)       # a folder that is a file: one line now, not after the counting
    inventory, sentences = phone_sequences(shards, splits, source, progress)
    if not sentences:
        raise PhonerecError(f"split(s) {splits} in {shards} have no utterances: nothing to estimate an LM from")
    labels = [s for s in inventory.symbols[1:] if s in inventory.label_symbols]
    arpa = estimate(sentences, order, vocabulary=labels)
    write_arpa(arpa, out)
    counts = [len(n) for n in arpa.ngrams]
    return {"path": str(out), "order": order, "sentences": len(sentences),
            "phones": sum(map(len, sentences)), "ngrams": counts}
