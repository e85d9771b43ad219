"""A compact, pickle-free binary form of a DataFrame, so ``attach`` can rebuild a run's input.

Why not JSON text of every cell (what run records held before): for 100,000 rows it was ~96 MB,
slow to write and read back, and it could not carry a timedelta. Why not Parquet: pyarrow is not
a dependency. So, with numpy and pandas alone, a frame is stored column by column:

* numbers, booleans, datetimes and timedeltas (numpy dtypes): their raw bytes;
* nullable ``Int64``/``Float64``/``boolean``...: the values' bytes plus the missing-value mask;
* timezone-aware datetimes: UTC ticks plus the zone's name; categoricals: codes plus categories;
* strings (``str``/``string`` dtypes) and ``object`` columns holding only ``str``, ``int``,
  ``float``, ``bool``, ``None`` or ``pd.NA``: one JSON list per column.

The index (``RangeIndex`` as three numbers, any other index or ``MultiIndex`` level like a column)
and the column labels are stored the same way. Anything else (a column of dicts, ``Decimal``\\ s,
periods, intervals, sparse or arrow-only dtypes...) raises :class:`UnsupportedFrame` with the
column's name: the run is then recorded without its frame, and ``attach`` asks for ``df=``.

Layout: ``MAGIC``, a 4-byte header length, the JSON header (dtypes, labels, where each buffer
is), then the buffers. Nothing in it is executable, so loading a file cannot run code.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["UnsupportedFrame", "decode_frame", "encode_frame"]

MAGIC = b"NPDFRAME1"
_SCALARS = (str, int, float, bool, type(None))
_MASKED = (pd.arrays.BooleanArray, pd.arrays.IntegerArray, pd.arrays.FloatingArray)


class UnsupportedFrame(ValueError):
    """The frame holds something this codec does not store; the message names the column."""


class _Writer:
    def __init__(self) -> None:
        self.buffers: list[bytes] = []
        self.offset = 0

    def add(self, data: bytes) -> list[int]:
        span = [self.offset, len(data)]
        self.buffers.append(data)
        self.offset += len(data)
        return span


def encode_frame(df: pd.DataFrame) -> bytes:
    """``df`` as bytes (see the module docstring); raises :class:`UnsupportedFrame`."""
    out = _Writer()
    columns = []
    for position in range(df.shape[1]):
        label = df.columns[position]
        try:
            columns.append(_encode_array(df.iloc[:, position], out))
        except UnsupportedFrame as exc:
            raise UnsupportedFrame(f"column {label!r} {exc}") from None
    try:
        index = _encode_index(df.index, out)
    except UnsupportedFrame as exc:
        raise UnsupportedFrame(f"the index {exc}") from None
    try:
        labels = _encode_index(df.columns, out)
    except UnsupportedFrame as exc:
        raise UnsupportedFrame(f"the column labels {exc}") from None
    header = json.dumps(
        {"rows": len(df), "columns": columns, "index": index, "labels": labels},
        separators=(",", ":"),
        allow_nan=True,
    ).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *out.buffers])


def decode_frame(data: bytes) -> pd.DataFrame:
    """The frame :func:`encode_frame` stored (same values, dtypes, index and labels)."""
    if not data.startswith(MAGIC):
        raise ValueError("not a frame stored by narrative_pandas")
    start = len(MAGIC)
    (size,) = struct.unpack_from("<I", data, start)
    header = json.loads(data[start + 4 : start + 4 + size])
    body = memoryview(data)[start + 4 + size :]
    arrays = [_decode_array(meta, body) for meta in header["columns"]]
    index = _decode_index(header["index"], body)
    frame = pd.DataFrame(
        {i: pd.Series(a, index=index, copy=False) for i, a in enumerate(arrays)}, index=index
    )
    frame.columns = _decode_index(header["labels"], body)
    result: pd.DataFrame = frame
    return result


# ------------------------------------------------------------------------------ arrays


def _encode_array(data: pd.Series | pd.Index, out: _Writer) -> dict[str, Any]:
    dtype = data.dtype
    values: Any = data.array
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        raw = np.ascontiguousarray(data.to_numpy())
        return {"kind": "numpy", "dtype": raw.dtype.str, "data": out.add(raw.tobytes())}
    if isinstance(dtype, pd.DatetimeTZDtype):
        ticks = np.ascontiguousarray(values.tz_convert("UTC").tz_localize(None).to_numpy())
        zone = str(dtype.tz)
        if pd.DatetimeTZDtype(dtype.unit, zone) != dtype:
            raise UnsupportedFrame(f"has a time zone ({zone}) that cannot be named")
        return {
            "kind": "datetimetz",
            "dtype": ticks.dtype.str,
            "tz": zone,
            "data": out.add(ticks.tobytes()),
        }
    if isinstance(dtype, pd.CategoricalDtype):
        codes = np.ascontiguousarray(values.codes)
        categories = _encode_array(dtype.categories, out)
        return {
            "kind": "category",
            "ordered": bool(dtype.ordered),
            "categories": categories,
            "dtype": codes.dtype.str,
            "data": out.add(codes.tobytes()),
        }
    if isinstance(dtype, pd.StringDtype):
        na = "NA" if dtype.na_value is pd.NA else "nan"
        items = [None if v is None or v is pd.NA or v != v else v for v in values.tolist()]
        return {"kind": "string", "storage": dtype.storage, "na": na, "data": _json(items, out)}
    if isinstance(values, _MASKED):
        mask = np.ascontiguousarray(values.isna())
        numpy_dtype: np.dtype[Any] = getattr(values.dtype, "numpy_dtype")  # noqa: B009 (stubs)
        raw = np.ascontiguousarray(values.to_numpy(dtype=numpy_dtype, na_value=0))
        return {
            "kind": "masked",
            "dtype": str(dtype),
            "numpy": raw.dtype.str,
            "data": out.add(raw.tobytes()),
            "mask": out.add(mask.tobytes()),
        }
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        items = data.tolist()
        return {"kind": "object", "data": _json([_plain(v) for v in items], out)}
    raise UnsupportedFrame(f"has dtype {dtype}, which the cache cannot store")


def _plain(value: Any) -> Any:
    if value is pd.NA:
        return {"na": 1}
    if type(value) not in _SCALARS:
        raise UnsupportedFrame(
            f"holds a {type(value).__name__} value, which the cache cannot store "
            "(it keeps str, int, float, bool and missing values in object columns)"
        )
    if type(value) is int and not -(2**63) <= value < 2**64:
        raise UnsupportedFrame("holds an integer too large to store")
    if type(value) is float and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def _unplain(value: Any) -> Any:
    if type(value) is dict:
        return pd.NA if "na" in value else float(value["float"])
    return value


def _json(items: list[Any], out: _Writer) -> list[int]:
    return out.add(json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode())


def _span(body: memoryview, span: list[int]) -> memoryview:
    return body[span[0] : span[0] + span[1]]


def _decode_array(meta: dict[str, Any], body: memoryview) -> Any:
    kind = meta["kind"]
    if kind == "numpy":
        return np.frombuffer(_span(body, meta["data"]), dtype=meta["dtype"]).copy()
    if kind == "datetimetz":
        ticks = np.frombuffer(_span(body, meta["data"]), dtype=meta["dtype"]).copy()
        return pd.DatetimeIndex(ticks).tz_localize("UTC").tz_convert(meta["tz"]).array
    if kind == "category":
        categories = _decode_array(meta["categories"], body)
        codes = np.frombuffer(_span(body, meta["data"]), dtype=meta["dtype"]).copy()
        ordered = pd.CategoricalDtype(pd.Index(categories, dtype=categories.dtype), meta["ordered"])
        return pd.Categorical.from_codes(codes, dtype=ordered)
    if kind == "string":
        na_value = pd.NA if meta["na"] == "NA" else np.nan
        try:
            strings = _string_dtype(meta["storage"], na_value)
        except ImportError:  # stored with pyarrow, read without it
            strings = _string_dtype("python", na_value)
        return pd.array(json.loads(bytes(_span(body, meta["data"]))), dtype=strings)
    if kind == "masked":
        values = np.frombuffer(_span(body, meta["data"]), dtype=meta["numpy"]).copy()
        mask = np.frombuffer(_span(body, meta["mask"]), dtype=bool).copy()
        stored: Any = pd.api.types.pandas_dtype(meta["dtype"])
        masked = stored.construct_array_type()
        return masked(values, mask)
    if kind == "object":
        items = [_unplain(v) for v in json.loads(bytes(_span(body, meta["data"])))]
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array
    raise ValueError(f"unknown stored column kind {kind!r}")


# ------------------------------------------------------------------------------ index


def _name(name: Any) -> Any:
    if type(name) not in _SCALARS:
        raise UnsupportedFrame(f"has a name of type {type(name).__name__}")
    return name


def _encode_index(index: pd.Index, out: _Writer) -> dict[str, Any]:
    if isinstance(index, pd.RangeIndex):
        return {
            "kind": "range",
            "start": index.start,
            "stop": index.stop,
            "step": index.step,
            "name": _name(index.name),
        }
    if isinstance(index, pd.MultiIndex):
        levels = [_encode_array(index.get_level_values(i), out) for i in range(index.nlevels)]
        return {"kind": "multi", "levels": levels, "names": [_name(n) for n in index.names]}
    return {"kind": "index", "array": _encode_array(index, out), "name": _name(index.name)}


def _decode_index(meta: dict[str, Any], body: memoryview) -> pd.Index:
    kind = meta["kind"]
    index: pd.Index
    if kind == "range":
        index = pd.RangeIndex(meta["start"], meta["stop"], meta["step"], name=meta["name"])
    elif kind == "multi":
        arrays = [_decode_array(level, body) for level in meta["levels"]]
        index = pd.MultiIndex.from_arrays(
            [pd.Index(a, dtype=a.dtype) for a in arrays], names=meta["names"]
        )
    else:
        array = _decode_array(meta["array"], body)
        index = pd.Index(array, dtype=array.dtype, name=meta["name"], copy=False)
    return index


def _string_dtype(storage: str, na_value: Any) -> Any:
    """``StringDtype(storage, na_value=...)``; pandas before 2.3 has no ``na_value`` (its NaN
    variant is a storage of its own, ``"pyarrow_numpy"``, kept as written)."""
    make: Any = pd.StringDtype
    try:
        return make(storage, na_value=na_value)
    except TypeError:
        return make(storage)
