"""``CTCBeamDecoder``: ctcdecode's interface over the batched torch search (``decoding.search``),
with an optional phone n-gram LM: the public adapter for users' own scripts. Its defaults are the
search's (``SearchOptions``), declared once there."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from pipeline.vocab import BLANK, VOCAB

from .ctc import check_lengths, default_labels
from .lm import DenseLM, dense, read_arpa
from .rerank import best_rows, grid_best, rerank
from .search import SearchOptions, search

_DEFAULT = SearchOptions()
BLANK_SKIP = _DEFAULT.blank_skip    # frames with P(blank) >= this extend nothing (their stays are exact)
# best() re-ranks the search's first BEST_OF rows (and greedy's) where the top row is not surely at least as
# likely as greedy's string (decoding.rerank.best_rows). On the demo's dev split (2026-12-07, a loaded 2-core
# Xeon, one thread, beam 50 with the LM) that costs 3 ms an utterance over the search's 15 ms, for the same
# 12.24 % PER (re-ranking all 50 rows everywhere: 12.3 ms more, 12.15 %); decode() re-ranks every row.
BEST_OF = 4


def load_lm(path, labels: Sequence[str], blank: int = BLANK) -> DenseLM:
    """An ARPA file (``phonerec lm``, KenLM, SRILM) as the dense table the search reads."""
    return dense(read_arpa(path), labels, blank=blank, path=path)


class CTCBeamDecoder:
    """Prefix beam search with the interface of ``ctcdecode.CTCBeamDecoder``.

    ``decode(probs [B, T, C], seq_lens [B])`` returns, on the CPU, ``beam_results [B, W, T]`` int32,
    ``beam_scores [B, W]`` float32, ``timesteps [B, W, T]`` int32 and ``out_lens [B, W]`` int32, all
    W rows filled best first (n-best, distinct; a row past the number of distinct hypotheses has
    length 0 and score +inf); the best hypothesis of utterance i is
    ``beam_results[i][0][:out_lens[i][0]]``. As in ctcdecode, ``beam_scores`` is minus the search's
    own acoustic CTC log-mass of the hypothesis (LM part left out; lower is better): a lower bound
    of the exact probability, whose pruned alignments it misses. ``timesteps``: the frame where each
    token's probability peaks while the hypothesis stays on it, as ctcdecode reports them.

    The search runs on ``probs.device``. ``num_processes`` > 1 splits a CPU batch over that many
    threads (the search's loop releases the GIL when TorchScript runs it). ``cutoff_top_n`` /
    ``cutoff_prob`` restrict each frame to ctcdecode's candidate classes; ``blank_skip``: frames
    whose blank probability reaches it extend nothing (1.0 would skip only certain frames; > 1:
    search every frame). ``model_path``: an ARPA phone LM over ``labels`` fused with weight
    ``alpha`` and a bonus ``beta`` per token (ignored without an LM, as in ctcdecode); or ``lm``, a
    ``DenseLM`` already read. ``labels=None`` accepts any class count (no LM then).
    The defaults are the search's (``SearchOptions``), not ctcdecode's (whose beam width is 100).
    """

    def __init__(self, labels: Sequence[str] | None = VOCAB, model_path=None, alpha: float = _DEFAULT.alpha,
                 beta: float = _DEFAULT.beta, cutoff_top_n: int = _DEFAULT.cutoff_top_n,
                 cutoff_prob: float = _DEFAULT.cutoff_prob, beam_width: int = _DEFAULT.beam_width,
                 num_processes: int = 4, blank_id: int = BLANK, log_probs_input: bool = False, *,
                 blank_skip: float = _DEFAULT.blank_skip, lm: DenseLM | None = None) -> None:
        if beam_width < 1 or num_processes < 1 or cutoff_top_n < 1:
            raise ValueError("beam_width, num_processes and cutoff_top_n must be >= 1")
        if not 0.0 < cutoff_prob <= 1.0:
            raise ValueError("cutoff_prob must be in (0, 1]")
        if not 0.0 < blank_skip:
            raise ValueError("blank_skip must be > 0")
        self.labels = None if labels is None else tuple(labels)
        if model_path is not None and lm is None:
            if self.labels is None:
                raise ValueError("a language model needs the labels")
            lm = load_lm(model_path, self.labels, blank_id)
        self.lm, self.alpha, self.beta = lm, float(alpha), float(beta)
        self.beam_width, self.num_processes, self.blank_id = int(beam_width), int(num_processes), int(blank_id)
        self.cutoff_top_n, self.cutoff_prob = int(cutoff_top_n), float(cutoff_prob)
        self.log_probs_input, self.blank_skip = bool(log_probs_input), float(blank_skip)

    def options(self, classes: int) -> SearchOptions:
        return SearchOptions(beam_width=self.beam_width, blank=self.blank_id,
                             cutoff_top_n=min(self.cutoff_top_n, classes), cutoff_prob=self.cutoff_prob,
                             blank_skip=self.blank_skip, alpha=self.alpha, beta=self.beta)

    def _check(self, probs, seq_lens):
        probs = torch.as_tensor(probs).detach()
        if probs.dim() != 3:
            raise ValueError("probs must be [B, T, C]")
        batch, frames, classes = probs.shape
        if self.labels is not None and len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels but {classes} classes in probs")
        if not 0 <= self.blank_id < classes:
            raise ValueError(f"blank_id {self.blank_id} out of range for {classes} classes")
        if self.lm is not None and self.lm.label_index.numel() != classes:
            raise ValueError(f"the language model covers {self.lm.label_index.numel()} classes, probs have {classes}")
        lens = check_lengths(torch.full((batch,), frames) if seq_lens is None else seq_lens, batch, frames)
        x = probs.float()
        log_probs = x if self.log_probs_input else torch.log(x)
        valid = torch.arange(frames, device=x.device)[None, :] < lens.to(x.device)[:, None]
        if torch.isnan(log_probs[valid]).any():
            raise ValueError("probs hold NaN within seq_lens")
        return log_probs, lens

    def decode(self, probs: torch.Tensor, seq_lens=None):
        """(beam_results, beam_scores, timesteps, out_lens) on the CPU; see the class docstring."""
        log_probs, lens = self._check(probs, seq_lens)
        res = self.search(log_probs, lens)
        r = self._rerank(log_probs, lens, res)
        batch, frames = log_probs.shape[:2]
        width = self.beam_width
        steps = _candidate_frames(log_probs, lens, res, self.blank_id).gather(
            1, r.order[:, :width, None].expand(-1, -1, r.tokens.shape[2]).to(res.frames.device))
        live = r.total[:, :width] > float("-inf")
        size = r.tokens.shape[2]
        beam_results = torch.zeros(batch, width, frames, dtype=torch.int32)
        timesteps = torch.zeros(batch, width, frames, dtype=torch.int32)
        beam_results[..., :size] = torch.where(live[..., None], r.tokens[:, :width], 0).int().cpu()
        timesteps[..., :size] = torch.where(live[..., None], steps, 0).int().cpu()
        scores = torch.where(live, -r.acoustic[:, :width], float("inf")).float().cpu()
        return beam_results, scores, timesteps, torch.where(live, r.lengths[:, :width], 0).int().cpu()

    def _rerank(self, log_probs, lengths, res, rows: int | None = None):
        rows = rows or res.tokens.shape[1]
        return rerank(log_probs, lengths, res.tokens[:, :rows], res.lengths[:, :rows],
                      (res.total > float("-inf"))[:, :rows], blank=self.blank_id,
                      lm=self.lm, alpha=self.alpha, beta=self.beta)

    def best(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """The best hypothesis of each utterance of normalised ``log_probs`` (any device; no checks,
        no timesteps): what predict and evaluate keep. Never less likely than greedy's
        (``decoding.rerank.best_rows``: where the search's top row is not surely at least as likely,
        its first ``BEST_OF`` rows and greedy's are re-ranked by their exact scores)."""
        res = self.search(log_probs, lengths.to(log_probs.device), timesteps=False)
        return best_rows(log_probs, lengths, res, BEST_OF, blank=self.blank_id, lm=self.lm, alpha=self.alpha,
                         beta=self.beta)

    def search(self, log_probs: torch.Tensor, lengths: torch.Tensor, timesteps: bool = True):
        """``decoding.search.Result`` of normalised ``log_probs`` on their device (no checks, no
        copies): the n-best with both scores, for callers that want more than ``decode``'s tuple;
        ``timesteps=False`` skips the tokens' frames."""
        opts = self.options(log_probs.shape[-1])
        workers = min(self.num_processes, log_probs.shape[0])
        if workers <= 1 or log_probs.device.type != "cpu":
            return search(log_probs, lengths.to(log_probs.device), opts, self.lm, timesteps)
        chunks = [c for c in torch.arange(log_probs.shape[0]).chunk(workers) if len(c)]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            parts = list(pool.map(lambda c: search(log_probs[c], lengths[c], opts, self.lm, timesteps), chunks))
        return _concat(parts)


def _candidate_frames(log_probs, lengths, res, blank: int) -> torch.Tensor:
    """The timesteps of every re-ranking candidate [B, K+1, L]: the search's rows, then the greedy
    hypothesis's (the peak of each token over the frames it holds)."""
    from .rerank import greedy_frames
    from .search import peak_frames
    starts, counts = greedy_frames(log_probs, lengths, blank)
    tokens = log_probs.argmax(-1).gather(1, starts) if starts.shape[1] else starts
    g = peak_frames(log_probs, tokens[:, None], starts[:, None], counts[:, None], lengths.to(log_probs.device))
    size = max(res.frames.shape[2], g.shape[2])
    pad = lambda x: torch.nn.functional.pad(x.long(), (0, size - x.shape[2]))    # noqa: E731
    return torch.cat([pad(res.frames), pad(g)], 1)


class WeightGrid:
    """The LM weight pairs of a grid decoded cheaply: one search without the LM and one with it at
    the grid's middle pair, then each pair's best of their n-best rows and greedy's by exact score
    (``decoding.rerank.grid_best``). On the demo's dev split (2026-12-07, one run, beam 20) the 16
    pairs took 2.5 s instead of 21.5 s for 16 fused searches, and the pair chosen decodes 0.01
    points worse than the full grid's best; in `make demo` (beam 50) train's whole choice took 10 s
    instead of 22 s and chose the pair the full grid had chosen."""

    def __init__(self, plain: CTCBeamDecoder, lm: DenseLM, pairs, *, plain_best: bool = False):
        self.pairs, self.plain_best = tuple(pairs), plain_best
        alphas, betas = sorted({a for a, _ in self.pairs}), sorted({b for _, b in self.pairs})
        self.pivot = (alphas[len(alphas) // 2], betas[len(betas) // 2])
        self.plain, self.lm = plain, lm
        self.fused = CTCBeamDecoder(plain.labels, lm=lm, alpha=self.pivot[0], beta=self.pivot[1],
                                    cutoff_top_n=plain.cutoff_top_n, cutoff_prob=plain.cutoff_prob,
                                    beam_width=plain.beam_width, num_processes=plain.num_processes,
                                    blank_id=plain.blank_id, log_probs_input=True, blank_skip=plain.blank_skip)

    def best(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> dict:
        """(alpha, beta) -> the best hypothesis of each utterance; with ``plain_best`` also "beam":
        what ``self.plain.best`` gives, from the same search (not run twice)."""
        lengths = lengths.to(log_probs.device)
        results = [dec.search(log_probs, lengths, timesteps=False) for dec in (self.plain, self.fused)]
        out = grid_best(log_probs, lengths, results, self.pairs, self.lm, self.plain.blank_id)
        if self.plain_best:
            out["beam"] = best_rows(log_probs, lengths, results[0], BEST_OF, blank=self.plain.blank_id)
        return out


@dataclass(frozen=True)
class DecodePlan:
    """Which decodes of a split to run, and where: what a decoding command's options ask for.

    ``search`` holds the search settings, declared once in ``SearchOptions`` (its beam width 0:
    greedy only; its alpha and beta: the LM's weights). The decodes are the keys of
    ``decoders()``: "beam" (no LM; with ``plain``, or when nothing is ``fused``), "lm" (``lm``,
    an ARPA file, fused at the search's alpha and beta: ``fused``) and each (alpha, beta) of
    ``grid`` (the LM weights' search, ``WeightGrid``). ``threads``: CPU search threads;
    ``search_device``: "cpu" or "cuda" (this process's GPU)."""
    search: SearchOptions = SearchOptions()
    lm: str = ""
    fused: bool = False
    threads: int = 1
    search_device: str = "cpu"
    plain: bool = True
    grid: tuple[tuple[float, float], ...] = ()

    @property
    def width(self) -> int:
        return self.search.beam_width

    @property
    def alpha(self) -> float:
        return self.search.alpha

    @property
    def beta(self) -> float:
        return self.search.beta

    def with_weights(self, alpha: float, beta: float, **changes) -> DecodePlan:
        """This plan with the LM fused at (alpha, beta)."""
        return replace(self, search=replace(self.search, alpha=alpha, beta=beta), fused=True, **changes)

    def device(self) -> torch.device:
        """Where the search runs: the CPU, or this process's GPU."""
        return torch.device("cuda", torch.cuda.current_device()) if self.search_device == "cuda" else torch.device("cpu")

    @property
    def final(self) -> str:
        """The key of the decode a submission takes: "lm" with a fused LM, else "beam"."""
        return "lm" if self.lm and self.fused and self.width > 0 else "beam"

    def decoders(self, labels: Sequence[str]) -> dict:
        """"beam", "lm" or "grid" -> its decoder; {} for greedy only. The LM is read once."""
        if self.width <= 0:
            return {}
        lm = load_lm(self.lm, labels) if self.lm else None
        o = self.search

        def make(model, alpha, beta):
            return CTCBeamDecoder(labels=labels, lm=model, alpha=alpha, beta=beta, cutoff_top_n=len(labels),
                                  cutoff_prob=o.cutoff_prob, beam_width=o.beam_width, blank_id=o.blank,
                                  num_processes=max(self.threads, 1), log_probs_input=True, blank_skip=o.blank_skip)
        out = {}
        plain = self.plain or self.final == "beam"
        if plain and not self.grid:
            out["beam"] = make(None, 0.0, 0.0)
        if self.final == "lm":
            out["lm"] = make(lm, o.alpha, o.beta)
        if self.grid:
            out["grid"] = WeightGrid(make(None, 0.0, 0.0), lm, self.grid, plain_best=plain)   # "beam" from its search
        return out


def _concat(parts):
    """One Result from the Results of consecutive chunks of a batch (token axes padded)."""
    from .search import Result
    size = max(p.tokens.shape[2] for p in parts)
    pad = lambda x: torch.nn.functional.pad(x, (0, size - x.shape[2]))    # noqa: E731
    frames = None if parts[0].frames is None else torch.cat([pad(p.frames) for p in parts])
    return Result(torch.cat([pad(p.tokens) for p in parts]), torch.cat([p.lengths for p in parts]), frames,
                  torch.cat([p.acoustic for p in parts]), torch.cat([p.total for p in parts]))


def beam_decode(log_probs: torch.Tensor, lengths, beam_width: int = _DEFAULT.beam_width, threads: int = 1,
                top_n: int | None = None, top_p: float | None = None, *,
                lm: DenseLM | None = None, alpha: float = _DEFAULT.alpha, beta: float = _DEFAULT.beta,
                labels: Sequence[str] | None = None) -> list[list[int]]:
    """The top hypothesis per utterance of ``log_probs [B, T, C]`` (no pruning unless top_n / top_p)."""
    classes = log_probs.shape[-1]
    decoder = CTCBeamDecoder(labels=labels or default_labels(classes), beam_width=beam_width,
                             num_processes=threads, cutoff_top_n=classes if top_n is None else top_n,
                             cutoff_prob=1.0 if top_p is None else top_p, log_probs_input=True,
                             lm=lm, alpha=alpha, beta=beta)
    return decoder.best(*decoder._check(log_probs, lengths))
