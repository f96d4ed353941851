"""Reading one user .npy file safely, shared by both stages (the contract): its header checked
against the file's size before anything is allocated, object arrays read without running their
pickle (only string arrays come out), and the feature checks every stage applies to a feature file
(`load_features`). A failure is an UtteranceError whose message is the reason shown to the user."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np

from .errors import PhonerecError
from .features import FEATURE_DIM

# FEATURE bound: the largest magnitude a feature value may have; a file holding more is damaged.
# Measured with this project's extraction (`speech.mfcc`: librosa, 40 mel bands in dB with a
# -100 dB floor (amin=1e-10) and top_db=80, orthonormal DCT): digital silence or 1e-6 noise gives
# C0 = sqrt(40) * -100 dB = -632.5, the most negative value any input can give; full-scale
# (clipped) white noise C0 <= +35, full-scale tones and square waves C0 in [-450, -16] and
# C1..C14 within +-111 (the 80 dB range bounds them); white noise 100x beyond full scale C0 +294,
# and audio left at int16 scale (+-32768, +90 dB) would shift C0 by sqrt(40) * 90 = +569, still
# under 1000. Kaldi and HTK take natural logs (4.3x smaller than dB), so their C0 / log-energy and
# (liftered) cepstra stay within a few hundred, and the course's features lie in roughly +-50. So
# no real MFCC reaches 1000, and 1e4 is at least 10x above all of them (15.8x above librosa's floor).
# It is also low enough to be harmless: one value v among N training frames moves a dimension's
# mean by v/N and adds about v**2/N to its variance; at the bound with N = 3e7 (100 h at 10 ms)
# that is 1e4/3e7 = 3e-4 and 1e8/3e7 = 3.3, i.e. a variance of ~100 (std 10) becomes 103.3
# (std +1.6 %), while one 3e38 adds 3e69 and makes that dimension's normalized values all ~0.
# A flipped float32 exponent bit multiplies a value by 2**(2**k): x2**128, x2**64 and x2**32 put
# any |x| > 3e-6 beyond 1e4, x2**16 any |x| > 0.15; the small flips (x256 and below) leave values
# within ~1e4, where they move the statistics no more than a value at the bound does.
MAX_ABS_FEATURE = 1e4
_BOUND_TEXT = f"{MAX_ABS_FEATURE:.0e}".replace("e+0", "e").replace("e+", "e")   # "1e4"
# Headers beyond these are damage, whatever the file's size (NumPy 1.x holds at most 32 dims).
MAX_NDIM = 32
MAX_DIM = 2 ** 40


class UtteranceError(PhonerecError, ValueError):
    """Why an utterance cannot be used (the message is the reason shown to the user)."""

    path: Path | None = None  # the offending file, when it is not the features file


def _read_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an open .npy file, leaving it at the start of the data."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fh)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fh)
    # Version 3.0 (UTF-8 field names) has no public reader; its private name moved in NumPy 2.
    impl = getattr(fmt, "_read_array_header", None) or np.lib._format_impl._read_array_header  # noqa: SLF001
    return impl(fh, version)


def _header_problem(shape: tuple[int, ...], dtype: np.dtype, held: int, what: str) -> str | None:
    """Why a header cannot describe the `held` data bytes that follow it (None if it can).

    Exact Python ints throughout: a product in int64 would wrap around for absurd shapes."""
    dims = [int(d) for d in shape]
    if len(dims) > MAX_NDIM:
        return f"{what} file has a damaged header: it claims {len(dims)} dimensions"
    if any(d < 0 for d in dims):
        return f"{what} file has a damaged header: it claims shape {dims}, with a negative dimension"
    count = math.prod(dims)
    if dtype.hasobject:          # pickled: every element takes at least one byte of the pickle
        if count > held:
            return (f"{what} file has a damaged header: it claims {dims} objects but the file "
                    f"holds {held} bytes after it")
    elif count * dtype.itemsize > held:
        return (f"truncated {what} file or damaged header: header claims {dims} {dtype} = "
                f"{count * dtype.itemsize} bytes but the file holds {held}")
    if any(d > MAX_DIM for d in dims):       # only left for empty arrays, e.g. [10**20, 0]
        return f"{what} file has a damaged header: it claims shape {dims}, a dimension beyond 2**40"
    return None


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in a .npy header (128 bytes read), or None for a header that is unreadable or
    that the file's size cannot hold (such a file is ingested, and rejected, later)."""
    try:
        with open(path, "rb") as fh:
            shape, _, dtype = _read_header(fh)
            data_start = fh.tell()
            held = fh.seek(0, 2) - data_start
    except Exception:  # noqa: BLE001 - any unreadable header is ingested (and rejected) later
        return None
    if _header_problem(shape, dtype, held, "feature"):
        return None
    return tuple(int(d) for d in shape)


def npy_frames(path: Path) -> int:
    """Frame count from the .npy header alone, used to sort before ingest; 0 for a header the file
    cannot hold, so the sum of these counts (the store's initial capacity) stays within the corpus."""
    shape = npy_shape(path)
    return shape[0] if shape else 0


# ------------------------------------------------------------------ object arrays, without pickle's risks
#
# Some releases store transcripts as object arrays of str, which NumPy writes as a pickle. Loading
# a pickle with np.load(allow_pickle=True) runs whatever it names (os.system, ...), before any
# check could reject the file. Instead the data part is unpickled here by `_StringArrayUnpickler`,
# which admits only the few names NumPy's pickles of such arrays use, each replaced by a stand-in
# that builds nothing but a plain ndarray of objects, str or bytes: NumPy's own _reconstruct,
# dtype and scalar are not called (a pickled dtype state can set flags that corrupt memory).
#
# What `np.save` emits (pickletools, NumPy 2.x; 1.x says numpy.core where 2.x says numpy._core):
#   object array of str:    numpy._core.multiarray._reconstruct, numpy.ndarray, numpy.dtype ('O8')
#   object array of np.str_: the same plus numpy._core.multiarray.scalar(dtype('<U5'), raw bytes)
#   StringDType array:       numpy._core._internal._convert_to_stringdtype_kwargs (header says 'O')
#   at pickle protocols 0-2, raw bytes (np.str_ data) as _codecs.encode(text, 'latin1')
# np.dtype pickles name numpy.dtype itself (also for the numpy.dtypes classes), never numpy.dtypes.


class _Refused(Exception):
    """A pickle asks for something an array of strings never needs (the text completes
    "holds a pickle that ...")."""


class _Admitted:
    """One name a pickle may use: calling it runs our stand-in; it cannot be modified (BUILD)."""

    __slots__ = ("_name", "_fn")

    def __init__(self, name: str, fn) -> None:
        self._name, self._fn = name, fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __setstate__(self, state) -> None:
        raise _Refused(f"would modify {self._name}")


_SAFE_DTYPE = re.compile(r"[<>|=]?(O[48]?|U\d{1,9}|S\d{1,9})")


class _DtypeSpec:
    """What a pickle asked np.dtype for; a real dtype only if one a string array can have."""

    __slots__ = ("spec", "order")

    def __init__(self, spec="O", *_flags) -> None:
        self.spec, self.order = spec, None

    def __setstate__(self, state) -> None:              # (version, byte order, ...): keep the order only
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.order = state[1]

    def resolve(self) -> np.dtype:
        spec = self.spec
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or not _SAFE_DTYPE.fullmatch(spec):
            raise _Refused(f"builds dtype {str(spec)[:40]!r}")
        dt = np.dtype(spec)
        return dt.newbyteorder(self.order) if self.order and dt.kind == "U" else dt


def _as_spec(dtype) -> np.dtype:
    if not isinstance(dtype, _DtypeSpec):
        raise _Refused(f"uses a {type(dtype).__name__} as a dtype")
    return dtype.resolve()


def _as_bytes(raw) -> bytes:
    if isinstance(raw, str):                            # Python 2 pickles, read as latin-1
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes):
        raise _Refused(f"gives array data as a {type(raw).__name__}")
    return raw


class _ArrayBuilder:
    """Stands in for the empty ndarray of numpy's _reconstruct; its state (BUILD) makes the array."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array = None

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("builds an array from an unknown state")
        shape, dtype, fortran, raw = state[-4:]
        if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM
                and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
            raise _Refused(f"builds an array of shape {str(shape)[:60]}")
        dt, count = _as_spec(dtype), math.prod(shape)
        order = "F" if fortran else "C"
        if dt.hasobject:
            if not isinstance(raw, list) or len(raw) != count:
                raise _Refused("builds an object array whose items do not match its shape")
            arr = np.fromiter(raw, dtype=object, count=count)     # items as they are (lists too)
        else:
            raw = _as_bytes(raw)
            if len(raw) != count * dt.itemsize or dt.itemsize == 0:
                raise _Refused(f"builds a {dt} array whose data does not match its shape")
            arr = np.frombuffer(raw, dtype=dt).copy()
        self.array = arr.reshape(shape, order=order)


class _NdarrayToken:
    """numpy.ndarray as a pickle names it: only the first argument of _reconstruct."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        raise _Refused("would modify numpy.ndarray")


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype, shape=None, dtype=None) -> _ArrayBuilder:
    if subtype is not _NDARRAY:
        raise _Refused(f"builds an array of type {type(subtype).__name__}")
    return _ArrayBuilder()


def _scalar(dtype, raw=None):
    """numpy's scalar(dtype, data): an np.str_ / np.bytes_ element, or the object itself."""
    dt = _as_spec(dtype)
    if dt.hasobject:
        return raw
    raw = _as_bytes(raw)
    if len(raw) != dt.itemsize or dt.itemsize == 0:
        raise _Refused(f"builds a {dt} scalar from {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dt)[0]


def _stringdtype(*_args, **_kwargs) -> _DtypeSpec:
    return _DtypeSpec("O")              # NumPy 2 StringDType: read as an object array of str


def _codecs_encode(text, encoding="utf-8", *_rest) -> bytes:
    """How Python 3 pickles bytes at protocols 0-2: _codecs.encode(text, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("would call _codecs.encode other than for bytes")
    return text.encode("latin1")


_ADMITTED = {
    **{(mod, "_reconstruct"): _Admitted(f"{mod}._reconstruct", _reconstruct)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "scalar"): _Admitted(f"{mod}.scalar", _scalar)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Admitted("numpy.dtype", _DtypeSpec),
    ("numpy._core._internal", "_convert_to_stringdtype_kwargs"):
        _Admitted("numpy._core._internal._convert_to_stringdtype_kwargs", _stringdtype),
    ("_codecs", "encode"): _Admitted("_codecs.encode", _codecs_encode),
}


class _StringArrayUnpickler(pickle.Unpickler):
    """Unpickles arrays of strings; any other name a pickle imports is refused, never imported."""

    def find_class(self, module: str, name: str):
        try:
            return _ADMITTED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"would import {str(module)[:80]}.{str(name)[:80]}") from None

    def persistent_load(self, pid):
        raise _Refused("uses a persistent id")


def _unpickle_array(fh, what: str) -> np.ndarray:
    """The array pickled in the rest of an open .npy file, or UtteranceError; nothing is executed."""
    try:
        obj = _StringArrayUnpickler(fh, encoding="latin1").load()
    except _Refused as exc:
        raise UtteranceError(f"{what} holds a pickle that {exc}; refused (only arrays of strings are read)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle can raise almost anything
        raise UtteranceError(f"{what} file holds an unreadable Python-object array "
                             f"(truncated?): {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, _ArrayBuilder) or obj.array is None:
        raise UtteranceError(f"{what} file does not hold an array")
    return obj.array


def _read_data(fh, shape: tuple[int, ...], fortran: bool, dtype: np.dtype, what: str, size: int) -> np.ndarray:
    """The array after the header, read once from the open file (its size already checked)."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes == 0:
        try:
            return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        except (ValueError, TypeError, OverflowError) as exc:
            raise UtteranceError(f"{what} file is not a valid .npy file ({size} bytes): {exc}") from exc
    buf = bytearray(nbytes)
    got = fh.readinto(buf)
    if got != nbytes:                                     # shrank since it was measured
        raise UtteranceError(f"truncated {what} file: its data ends after {got} of {nbytes} bytes")
    try:
        arr = np.frombuffer(buf, dtype=dtype, count=count)
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    except (ValueError, TypeError) as exc:
        raise UtteranceError(f"{what} file is not a valid .npy file ({size} bytes): {exc}") from exc


def load_array(path: Path, what: str, allow_objects: bool = False) -> np.ndarray:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UtteranceError(f"cannot access {what} file: {exc.strerror or exc}") from exc
    if size == 0:
        raise UtteranceError(f"empty {what} file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(np.lib.format.MAGIC_PREFIX))
            if head != np.lib.format.MAGIC_PREFIX[:len(head)]:
                raise UtteranceError(f"{what} file is not a .npy file (no NumPy header, {size} bytes)")
            fh.seek(0)
            try:
                shape, fortran, dtype = _read_header(fh)
            except Exception as exc:  # noqa: BLE001 - a damaged header can raise several types
                msg = str(exc)
                if "EOF" in msg:
                    raise UtteranceError(f"truncated {what} file ({size} bytes): {msg}") from exc
                raise UtteranceError(f"{what} file is not a valid .npy file: {msg}") from exc
            if dtype.hasobject and not allow_objects:
                raise UtteranceError(f"{what} file holds a Python-object array")
            # Before anything is allocated: the header must fit the file (an absurd shape is damage).
            problem = _header_problem(shape, dtype, size - fh.tell(), what)
            if problem:
                raise UtteranceError(problem)
            if dtype.hasobject:
                return _unpickle_array(fh, what)
            return _read_data(fh, shape, fortran, dtype, what, size)
    except PermissionError as exc:
        raise UtteranceError(f"{what} file is not readable (permission denied)") from exc
    except OSError as exc:
        raise UtteranceError(f"{what} file is not a valid .npy file ({size} bytes): {exc}") from exc


def load_features(path: Path, dim: int = FEATURE_DIM) -> np.ndarray:
    """A float32 [T, dim] array with T >= 1, only finite values, none beyond ±MAX_ABS_FEATURE.
    `dim` is the corpus's width (the training files'): another width is named in the reason."""
    x = load_array(path, "feature")
    if x.dtype.kind != "f":
        raise UtteranceError(f"features have dtype {x.dtype}, expected a float type")
    if x.ndim != 2 or x.shape[1] != dim:
        hint = f" (looks transposed: [{dim}, T])" if x.ndim == 2 and x.shape[0] == dim else ""
        other = f": {x.shape[1]} features per frame, the corpus has {dim}" if x.ndim == 2 and not hint else ""
        raise UtteranceError(f"features have shape {list(x.shape)}, expected [T, {dim}]{hint}{other}")
    if x.shape[0] < 1:
        raise UtteranceError("features have 0 frames")
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        lo, hi = float(x32.min()), float(x32.max())      # NaN propagates; no temporary array
    if not (math.isfinite(lo) and math.isfinite(hi)):
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise UtteranceError(f"features contain NaN or infinity ({bad} frame(s))")
        # e.g. float64 values beyond float32's range
        raise UtteranceError("features hold values beyond the float32 range (overflow to infinity)")
    peak = max(-lo, hi)
    if peak > MAX_ABS_FEATURE:
        over = np.abs(x32) > MAX_ABS_FEATURE
        dims = np.flatnonzero(over.any(axis=0)).tolist()
        frames = int(over.any(axis=1).sum())
        where = f"dimension {dims[0]}" if len(dims) == 1 else f"dimensions {', '.join(map(str, dims))}"
        raise UtteranceError(f"features hold values of magnitude up to {peak:.1e} in {frames} frame(s) "
                             f"({where}): beyond ±{_BOUND_TEXT}, which no MFCC reaches (damaged file?)")
    return x32
