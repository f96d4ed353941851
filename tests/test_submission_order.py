"""A split's order is its file names sorted as the course's starter sorts them
(`sorted(os.listdir(mfcc))`): the submission's row i is that list's file i. Sorting the ids instead
put 'a' before 'a b' and 'a-b' (' ' and '-' sort below '.'), and every row held another file's
utterance, exit 0."""

from __future__ import annotations

import os

import numpy as np

from pipeline import manifest as mf
from pipeline.layout import list_split, safe_text
from tests.helpers import TEST

# Names chosen to break every shortcut: characters below and above '.', digits of different
# lengths, case, and a name that is not UTF-8.
NAMES = [b"a", b"a b", b"a-b", b"a.b", b"a_b", b"a+b", b"A", b"9", b"10", b"100", b"b", b"\xffz", b"z\xe9"]


def test_split_order_is_the_sorted_file_names(pipe, tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train-clean-100", 12), ("dev-clean", 3)):
        for i in range(n):
            pipe.write_utterance(data, split, f"u{i:02d}", pipe.random_feats(rng, 40 + i), ["[SOS]", "AA", "B", "[EOS]"])
    mfcc = data / TEST / "mfcc"
    mfcc.mkdir(parents=True)
    for k, name in enumerate(NAMES):
        x = np.full((30 + k, 15), float(k), dtype=np.float32)           # utterance k: all features k
        with open(os.path.join(os.fsencode(mfcc), name + b".npy"), "wb") as fh:
            np.save(fh, x)
    course = [safe_text(n[:-4]) for n in sorted(os.listdir(mfcc))]     # the starter's order
    assert course[:4] == ["10", "100", "9", "A"] and course.index("a b") < course.index("a-b") < course.index("a")
    assert list_split(data, TEST, labelled=False).ids == course

    pipe.build(data, tmp_path / "shards", min_shards=2)
    m = mf.load(tmp_path / "shards", TEST)
    by_index = {int(m.index[r]): m.ids[r] for r in range(m.num_utterances)}
    assert [by_index[i] for i in range(len(course))] == course
    # and each row holds its own file's frames: utterance k was written with 30 + k frames
    frames = {m.ids[r]: int(m.frames[r]) for r in range(m.num_utterances)}
    names = [safe_text(n.decode("utf-8", "surrogateescape")) for n in NAMES]
    assert {u: frames[u] - 30 for u in course} == {u: names.index(u) for u in course}
