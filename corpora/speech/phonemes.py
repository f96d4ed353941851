"""Phone maps: each synthesizer's phone set -> the task's 39 ARPAbet phonemes plus [SIL], and back from
CMUdict to espeak-ng's phoneme input.

The labels of the corpus are READ BACK from what an engine reports it rendered; this module turns
those reports into labels (``phones_to_labels``) and refuses a phone with no equivalent.
"""

from __future__ import annotations

from pipeline.vocab import LABEL_SYMBOLS

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
