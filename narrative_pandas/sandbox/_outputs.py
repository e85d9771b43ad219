"""Synthetic structured outputs that follow a request's JSON Schema, deterministically.

The sandbox has no model: it answers every job with a value drawn from the request's
``output_format_schema`` (types, enums, bounds, lengths, simple patterns, formats, nested objects,
arrays, ``anyOf``/``oneOf``/``allOf``, ``$ref``/``$defs``, nullable types), seeded from a hash of
the request, so the same request always gets the same answer and different rows get different
ones. Validators are compiled once per distinct schema and cached.

``jsonschema`` (over a second to import where Jupyter's format checkers are installed) is
imported only when a schema or an output needs it: the client's one-sided quick checks say yes
to the usual schemas and, for schemas without ``format``, to their valid outputs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import math
import random
import re
import string
import sys
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from .._quickcheck import QuickCheck, compile_quick_check
from .._quickmeta import surely_valid_schema

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

__all__ = [
    "canonical_json",
    "compile_schema",
    "estimate_tokens",
    "output_error",
    "prompt_words",
    "synthesize",
]

_sre: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11) else "sre_parse")
_MAXREPEAT: int = int(getattr(_sre, "MAXREPEAT", 2**31 - 1))

_DEEP = 4
"""Past this nesting depth, optional parts are left out so recursive schemas end."""
_NULL_CHANCE = 0.15
_OPTIONAL_CHANCE = 0.75

_VOCABULARY: tuple[str, ...] = (
    "alpha", "amber", "apple", "atlas", "beacon", "birch", "blue", "bright", "calm", "cedar",
    "clear", "cloud", "coral", "crisp", "delta", "ember", "fable", "fern", "field", "forest",
    "gentle", "golden", "harbor", "hazel", "island", "ivory", "jade", "kind", "lake", "lemon",
    "light", "linen", "maple", "meadow", "mellow", "mint", "misty", "noble", "north", "ocean",
    "olive", "orchid", "pearl", "pine", "plain", "quiet", "rapid", "river", "robin", "sage",
    "sharp", "silver", "simple", "smooth", "solar", "spring", "steady", "stone", "summer",
    "swift", "tidal", "timber", "topaz", "true", "valley", "velvet", "vivid", "warm", "willow",
    "winter", "zephyr",
)  # fmt: skip

_LONG_TEXT_HINTS = ("summary", "reason", "explanation", "description", "rationale", "text", "note")
_UNIT_HINTS = ("confidence", "score", "probability", "prob", "ratio", "rate", "certainty")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the identity of a schema or request."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Judge(Protocol):
    """What :func:`synthesize` needs of a validator."""

    def is_valid(self, instance: Any) -> bool: ...


class OutputValidator:
    """Judges outputs against one (valid) schema, formats included, as ``jsonschema`` does.

    A yes of the quick check needs no ``jsonschema``; every other answer, and every message, comes
    from ``Draft202012Validator`` with its format checker, built on first need. Schemas that
    mention ``format`` skip the quick check (it treats formats as annotations).
    """

    def __init__(self, schema: dict[str, Any], key: str) -> None:
        self.schema = schema
        self._quick: QuickCheck | None = None if '"format"' in key else compile_quick_check(schema)
        self._full: Draft202012Validator | None = None

    def full(self) -> Draft202012Validator:
        """The jsonschema validator (imported and built on first use)."""
        if self._full is None:
            from jsonschema import Draft202012Validator

            self._full = Draft202012Validator(
                self.schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
        return self._full

    def is_valid(self, instance: Any) -> bool:
        if self._quick is not None and self._quick(instance):
            return True
        return self.full().is_valid(instance)

    def iter_errors(self, instance: Any) -> Iterator[ValidationError]:
        if self._quick is not None and self._quick(instance):
            return iter(())
        return self.full().iter_errors(instance)


@functools.lru_cache(maxsize=1024)
def _compile_key(key: str) -> OutputValidator | str:
    schema = json.loads(key)
    if not surely_valid_schema(schema):
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            return f"{exc.message}" + (f" (at {where})" if where else "")
    return OutputValidator(schema, key)


def compile_schema(schema: Any, key: str | None = None) -> OutputValidator | str:
    """A cached validator for ``schema``, or a message saying why it is not a valid schema.

    ``key`` is ``canonical_json(schema)`` when the caller already has it.
    """
    if not isinstance(schema, dict):
        return "must be a JSON object"
    return _compile_key(key if key is not None else canonical_json(schema))


def output_error(validator: OutputValidator, output: Any) -> str | None:
    """Why ``output`` breaks the schema (one line), or None when it follows it."""
    try:
        errors = list(validator.iter_errors(output))
        if not errors:
            return None
        from jsonschema.exceptions import best_match

        error = best_match(errors)
    except Exception as exc:  # an unresolvable $ref and the like: the schema cannot judge
        return f"the schema could not be applied ({type(exc).__name__}: {exc})"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return str(error.message) + (f" (at {where})" if where else "")


def estimate_tokens(text: str) -> int:
    """About four characters per token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def prompt_words(texts: Iterable[str], limit: int = 40) -> tuple[str, ...]:
    """Distinct lower-case words of the prompt, to make synthetic text look related to it."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"[A-Za-z]{3,12}", text):
            seen.setdefault(word.lower(), None)
            if len(seen) >= limit:
                return tuple(seen)
    return tuple(seen)


def _seed_from(material: str) -> int:
    return int.from_bytes(hashlib.sha256(material.encode("utf-8")).digest()[:8], "big")


def synthesize(
    schema: dict[str, Any],
    seed_material: str,
    *,
    words: tuple[str, ...] = (),
    validator: Judge | None = None,
    attempts: int = 8,
) -> Any:
    """A value that follows ``schema``, the same for the same ``seed_material``.

    Tries up to ``attempts`` draws and returns the first one ``validator`` accepts; when a schema
    defeats the generator (rare: look-around patterns, contradictory keywords) the last draw is
    returned as it is.
    """
    rng = random.Random(_seed_from(seed_material))
    gen = _Generator(schema, rng, words)
    last: Any = None
    for _ in range(attempts):
        try:
            value = gen.value(schema, 0, "")
        except (_Impossible, RecursionError):
            continue
        if validator is None:
            return value
        try:
            if validator.is_valid(value):
                return value
        except Exception:  # the schema cannot judge (unresolvable $ref): take the draw
            return value
        last = value
    return last


class _Impossible(Exception):
    """A ``false`` schema was required: no value can follow it."""


class _Unsupported(Exception):
    """A regex feature the pattern sampler does not cover."""


def _merge(a: Any, b: Any) -> Any:
    """One schema that asks for what both ``a`` and ``b`` ask for (as far as generation cares)."""
    if a is False or b is False:
        return False
    if a is True or not isinstance(a, dict):
        return b
    if b is True or not isinstance(b, dict):
        return a
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif key == "properties" and isinstance(value, dict) and isinstance(out[key], dict):
            props = dict(out[key])
            for name, sub in value.items():
                props[name] = _merge(props[name], sub) if name in props else sub
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            out[key] = max(out[key], value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            out[key] = min(out[key], value)
        elif key == "enum":
            both = [v for v in out[key] if v in value]
            out[key] = both or out[key]
        elif key == "type":
            out[key] = _merge_types(out[key], value)
        elif key == "additionalProperties":
            out[key] = False if (value is False or out[key] is False) else _merge(out[key], value)
        elif key in ("items", "contains", "not") and out[key] != value:
            out[key] = _merge(out[key], value) if key != "not" else out[key]
        elif key == "allOf":
            out[key] = [*out[key], *value]
        elif out[key] != value and key in ("anyOf", "oneOf", "$ref", "const"):
            out.setdefault("allOf", [])
            out["allOf"] = [*out["allOf"], {key: value}]
    return out


def _merge_types(a: Any, b: Any) -> Any:
    left = {a} if isinstance(a, str) else set(a)
    right = {b} if isinstance(b, str) else set(b)
    both = left & right
    if ("number" in left and "integer" in right) or ("integer" in left and "number" in right):
        both.add("integer")
    if not both:
        return a
    ordered = [t for t in ([a] if isinstance(a, str) else a) if t in both]
    ordered += sorted(both - set(ordered))
    return ordered[0] if len(ordered) == 1 else ordered


def _infer_type(schema: dict[str, Any]) -> str:
    if any(k in schema for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems", "contains")):
        return "array"
    if any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
        return "string"
    if "multipleOf" in schema and float(schema["multipleOf"]).is_integer():
        return "integer"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


class _Generator:
    """Draws values for one schema from one seeded generator."""

    def __init__(self, root: Any, rng: random.Random, words: tuple[str, ...]) -> None:
        self.root = root
        self.rng = rng
        self.words: tuple[str, ...] = tuple(words) + _VOCABULARY if words else _VOCABULARY

    # --- schema plumbing -------------------------------------------------------------------
    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return True  # remote or $id-relative references: accept anything
        node: Any = self.root
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            return self._anchor(pointer)
        for part in pointer.split("/")[1:]:
            part = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return True
        return node

    def _anchor(self, name: str) -> Any:
        stack = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("$anchor") == name or node.get("$dynamicAnchor") == name:
                    return node
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return True

    def _expand(self, schema: Any) -> Any:
        """Resolve ``$ref`` and fold ``allOf`` until neither is left at the top."""
        for _ in range(64):
            if not isinstance(schema, dict):
                return schema
            if "$ref" in schema or "$dynamicRef" in schema:
                ref = schema.get("$ref", schema.get("$dynamicRef"))
                target = self._resolve(ref) if isinstance(ref, str) else True
                rest = {k: v for k, v in schema.items() if k not in ("$ref", "$dynamicRef")}
                schema = _merge(target, rest) if rest else target
                continue
            if "allOf" in schema:
                merged: Any = {k: v for k, v in schema.items() if k != "allOf"}
                for sub in schema["allOf"]:
                    merged = _merge(merged, self._expand(sub))
                schema = merged
                continue
            return schema
        return schema

    def _is_null_branch(self, schema: Any) -> bool:
        expanded = self._expand(schema)
        if not isinstance(expanded, dict):
            return False
        return expanded.get("type") == "null" or ("const" in expanded and expanded["const"] is None)

    # --- values ----------------------------------------------------------------------------
    def value(self, schema: Any, depth: int, name: str) -> Any:
        if depth > 40:
            raise _Impossible("schema nests too deep")
        schema = self._expand(schema)
        if schema is False:
            raise _Impossible("false schema")
        if not isinstance(schema, dict):
            return self._text(0, None, name)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return copy.deepcopy(self.rng.choice(enum))
        for key in ("oneOf", "anyOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                base = {k: v for k, v in schema.items() if k != key}
                branch = self._pick_branch(branches, depth)
                return self.value(_merge(base, branch) if base else branch, depth, name)
        declared = schema.get("type")
        if isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list) and declared:
            types = [str(t) for t in declared]
        else:
            types = [_infer_type(schema)]
        if "null" in types:
            others = [t for t in types if t != "null"]
            if not others or depth > _DEEP or self.rng.random() < _NULL_CHANCE:
                return None
            types = others
        chosen = types[0] if len(types) == 1 else self.rng.choice(types)
        if chosen == "object":
            return self._object(schema, depth, name)
        if chosen == "array":
            return self._array(schema, depth, name)
        if chosen == "integer":
            return self._integer(schema, name)
        if chosen == "number":
            return self._number(schema, name)
        if chosen == "boolean":
            return self.rng.random() < 0.5
        if chosen == "null":
            return None
        return self._string(schema, name)

    def _pick_branch(self, branches: list[Any], depth: int) -> Any:
        usable = [b for b in branches if b is not False]
        if not usable:
            raise _Impossible("no usable branch")
        nulls = [b for b in usable if self._is_null_branch(b)]
        others = [b for b in usable if not self._is_null_branch(b)]
        if nulls and (not others or depth > _DEEP or self.rng.random() < _NULL_CHANCE):
            return nulls[0]
        if depth > _DEEP:
            plain = [b for b in others if not (isinstance(b, dict) and "$ref" in b)]
            others = plain or others
        return self.rng.choice(others)

    def _object(self, schema: dict[str, Any], depth: int, name: str) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        additional = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if sub is False:
                continue
            if key in required or (depth < _DEEP and self.rng.random() < _OPTIONAL_CHANCE):
                out[key] = self.value(sub, depth + 1, key)
        extra_schema: Any = additional if isinstance(additional, dict) else True
        for key in required:
            if key not in out:
                out[key] = self.value(props.get(key, extra_schema), depth + 1, key)
        dependent = schema.get("dependentRequired")
        if isinstance(dependent, dict):
            for key, needs in dependent.items():
                if key in out:
                    for need in needs:
                        if need not in out:
                            out[need] = self.value(props.get(need, extra_schema), depth + 1, need)
        min_props = int(schema.get("minProperties", 0) or 0)
        spare = [k for k in props if k not in out and props[k] is not False]
        while len(out) < min_props and spare:
            key = spare.pop(0)
            out[key] = self.value(props[key], depth + 1, key)
        counter = 0
        while len(out) < min_props and additional is not False:
            counter += 1
            key = f"{self.rng.choice(self.words)}_{counter}"
            out.setdefault(key, self.value(extra_schema, depth + 1, key))
        max_props = schema.get("maxProperties")
        if isinstance(max_props, int):
            for key in [k for k in reversed(list(out)) if k not in required]:
                if len(out) <= max_props:
                    break
                del out[key]
        return out

    def _array(self, schema: dict[str, Any], depth: int, name: str) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items: Any = schema.get("items", True)
        if isinstance(items, list):  # draft-07 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        min_items = int(schema.get("minItems", 0) or 0)
        max_items = schema.get("maxItems")
        cap = int(max_items) if isinstance(max_items, (int, float)) else min_items + 3
        if items is False:
            cap = min(cap, len(prefix))
        if depth >= _DEEP:
            count = min(min_items, cap)
        else:
            low = min(max(min_items, 1), cap)
            count = self.rng.randint(low, max(low, min(cap, low + 2)))
        unique = schema.get("uniqueItems") is True
        out: list[Any] = []
        seen: set[str] = set()
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            value = self.value(sub, depth + 1, name)
            if unique:
                tries = 0
                while canonical_json(value) in seen and tries < 12:
                    value = self.value(sub, depth + 1, name)
                    tries += 1
                if canonical_json(value) in seen and index >= min_items:
                    break
                seen.add(canonical_json(value))
            out.append(value)
        contains = schema.get("contains")
        if contains is not None and contains is not True:
            wanted = self.value(_merge(items, contains), depth + 1, name)
            if out and (len(out) >= cap or len(out) > len(prefix)):
                out[-1] = wanted
            else:
                out.append(wanted)
        return out

    def _integer(self, schema: dict[str, Any], name: str) -> int:
        low: int | None = None
        high: int | None = None
        if _is_num(schema.get("minimum")):
            low = math.ceil(schema["minimum"])
        if _is_num(schema.get("exclusiveMinimum")):
            candidate = math.floor(schema["exclusiveMinimum"]) + 1
            low = candidate if low is None else max(low, candidate)
        if _is_num(schema.get("maximum")):
            high = math.floor(schema["maximum"])
        if _is_num(schema.get("exclusiveMaximum")):
            candidate = math.ceil(schema["exclusiveMaximum"]) - 1
            high = candidate if high is None else min(high, candidate)
        if low is None and high is None:
            low, high = (1, 5) if any(h in name.lower() for h in ("rating", "stars")) else (0, 100)
        elif low is None:
            assert high is not None
            low = high - 100
        elif high is None:
            high = low + 100
        if low > high:
            return low
        step = _num(schema.get("multipleOf"))
        if step is not None and step > 0 and float(step).is_integer():
            m = int(step)
            first = math.ceil(low / m) * m
            if first > high:
                return first
            return first + m * self.rng.randint(0, (high - first) // m)
        return self.rng.randint(low, high)

    def _number(self, schema: dict[str, Any], name: str) -> float:
        low = _num(schema.get("minimum"))
        high = _num(schema.get("maximum"))
        ex_low = _num(schema.get("exclusiveMinimum"))
        ex_high = _num(schema.get("exclusiveMaximum"))
        lows = [v for v in (low, ex_low) if v is not None]
        highs = [v for v in (high, ex_high) if v is not None]
        lo = max(lows) if lows else None
        hi = min(highs) if highs else None
        if lo is None and hi is None:
            unit = any(h in name.lower() for h in _UNIT_HINTS)
            lo, hi = (0.0, 1.0) if unit else (0.0, 100.0)
        elif lo is None:
            assert hi is not None
            lo = hi - 100.0
        elif hi is None:
            hi = lo + 100.0
        assert lo is not None and hi is not None

        def fits(v: float) -> bool:
            return (
                (low is None or v >= low)
                and (high is None or v <= high)
                and (ex_low is None or v > ex_low)
                and (ex_high is None or v < ex_high)
            )

        step = _num(schema.get("multipleOf"))
        if step is not None and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            decimals = max(0, -math.floor(math.log10(step))) + 2
            for _ in range(6):
                k = self.rng.randint(first, last) if first <= last else first
                v = round(k * step, decimals)
                if fits(v):
                    return float(v)
            return float(first * step)
        for digits in (3, 6, 12):
            v = round(self.rng.uniform(lo, hi), digits)
            if fits(v):
                return float(v)
        return float((lo + hi) / 2)

    def _string(self, schema: dict[str, Any], name: str) -> str:
        min_len = int(_num(schema.get("minLength")) or 0)
        max_raw = _num(schema.get("maxLength"))
        max_len = int(max_raw) if max_raw is not None else None

        def fits(s: str) -> bool:
            return len(s) >= min_len and (max_len is None or len(s) <= max_len)

        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                compiled = re.compile(pattern)
                for _ in range(10):
                    candidate = _sample_regex(pattern, self.rng)
                    if fits(candidate) and compiled.search(candidate):
                        return candidate
            except (_Unsupported, re.error, RecursionError, ValueError, TypeError):
                pass
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            candidate = str(_FORMATS[fmt](self.rng, self.words))
            if fits(candidate):
                return candidate
        return self._text(min_len, max_len, name)

    def _text(self, min_len: int, max_len: int | None, name: str) -> str:
        long = any(h in name.lower() for h in _LONG_TEXT_HINTS)
        count = self.rng.randint(5, 12) if long else self.rng.randint(1, 3)
        words = [self.rng.choice(self.words) for _ in range(count)]
        text = " ".join(words)
        if long:
            text = text[:1].upper() + text[1:] + "."
        while len(text) < min_len:
            text += " " + self.rng.choice(self.words)
        if max_len is not None and len(text) > max_len:
            text = text[:max_len].rstrip()
        if len(text) < min_len:
            text = text + "x" * (min_len - len(text))
        return text


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: Any) -> float | None:
    """A numeric keyword's value, or None when absent or not a number."""
    return float(value) if _is_num(value) else None


# --- formats ---------------------------------------------------------------------------------
_EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)


def _when(rng: random.Random) -> datetime:
    return _EPOCH + timedelta(seconds=rng.randint(0, 6 * 365 * 86400))


def _fmt_email(rng: random.Random, words: tuple[str, ...]) -> str:
    return f"{rng.choice(words)}.{rng.choice(words)}@example.com"


def _fmt_uri(rng: random.Random, words: tuple[str, ...]) -> str:
    return f"https://example.com/{rng.choice(words)}/{rng.choice(words)}"


def _fmt_hostname(rng: random.Random, words: tuple[str, ...]) -> str:
    return f"{rng.choice(words)}.example.com"


_FORMATS: dict[str, Any] = {
    "date": lambda rng, words: _when(rng).date().isoformat(),
    "date-time": lambda rng, words: _when(rng).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "time": lambda rng, words: _when(rng).strftime("%H:%M:%SZ"),
    "duration": lambda rng, words: f"P{rng.randint(1, 30)}DT{rng.randint(0, 23)}H",
    "email": _fmt_email,
    "idn-email": _fmt_email,
    "uri": _fmt_uri,
    "iri": _fmt_uri,
    "uri-reference": _fmt_uri,
    "iri-reference": _fmt_uri,
    "url": _fmt_uri,
    "hostname": _fmt_hostname,
    "idn-hostname": _fmt_hostname,
    "uuid": lambda rng, words: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "ipv4": lambda rng, words: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda rng, words: ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)),
    "json-pointer": lambda rng, words: f"/{rng.choice(words)}/{rng.randint(0, 9)}",
    "regex": lambda rng, words: f"^{rng.choice(words)}$",
}


# --- regex sampling --------------------------------------------------------------------------
_PRINTABLE = string.ascii_letters + string.digits + " -_.,:/@#"
_CATEGORY_CHARS = {
    "CATEGORY_DIGIT": string.digits,
    "CATEGORY_NOT_DIGIT": string.ascii_letters + " -_",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": string.ascii_letters + string.digits,
    "CATEGORY_WORD": string.ascii_letters + string.digits + "_",
    "CATEGORY_NOT_WORD": " -.,",
}


def _name(op: Any) -> str:
    return str(getattr(op, "name", op))


def _sample_regex(pattern: str, rng: random.Random) -> str:
    """A string matching ``pattern`` for the common regex subset (raises _Unsupported)."""
    return _emit(_sre.parse(pattern), rng, {})


def _in_class(ch: str, items: list[tuple[Any, Any]]) -> bool:
    for op, av in items:
        kind = _name(op)
        if kind == "LITERAL" and ord(ch) == av:
            return True
        if kind == "RANGE" and av[0] <= ord(ch) <= av[1]:
            return True
        if kind == "CATEGORY" and ch in _CATEGORY_CHARS.get(_name(av), ""):
            return True
    return False


def _pick_class(items: list[tuple[Any, Any]], rng: random.Random) -> str:
    if items and _name(items[0][0]) == "NEGATE":
        rest = items[1:]
        choices = [c for c in _PRINTABLE if not _in_class(c, rest)]
        if not choices:
            raise _Unsupported("empty negated class")
        return rng.choice(choices)
    op, av = rng.choice(items)
    kind = _name(op)
    if kind == "LITERAL":
        return chr(av)
    if kind == "RANGE":
        low, high = av
        return chr(rng.randint(low, min(high, low + 200)))
    if kind == "CATEGORY":
        chars = _CATEGORY_CHARS.get(_name(av))
        if chars:
            return rng.choice(chars)
    raise _Unsupported(kind)


def _emit(parsed: Any, rng: random.Random, groups: dict[int, str]) -> str:
    out: list[str] = []
    for op, av in parsed:
        kind = _name(op)
        if kind == "LITERAL":
            out.append(chr(av))
        elif kind == "NOT_LITERAL":
            out.append(rng.choice([c for c in _PRINTABLE if ord(c) != av]))
        elif kind == "ANY":
            out.append(rng.choice(string.ascii_letters))
        elif kind == "IN":
            out.append(_pick_class(list(av), rng))
        elif kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = av
            high = low + 3 if high >= _MAXREPEAT else min(high, low + 6)
            for _ in range(rng.randint(low, high)):
                out.append(_emit(sub, rng, groups))
        elif kind == "SUBPATTERN":
            group, sub = av[0], av[-1]
            text = _emit(sub, rng, groups)
            if group is not None:
                groups[group] = text
            out.append(text)
        elif kind == "ATOMIC_GROUP":
            out.append(_emit(av, rng, groups))
        elif kind == "BRANCH":
            out.append(_emit(rng.choice(av[1]), rng, groups))
        elif kind == "GROUPREF":
            out.append(groups.get(av, ""))
        elif kind == "AT":
            continue
        else:
            raise _Unsupported(kind)
    return "".join(out)
