"""``compare``: the same rows through several models and/or prompts, side by side, in one run.

Every variant is planned like ``infer`` would plan it (so every check raises before a request),
then all of them run as one run (see ``_variants``): one engine, one cache, one concurrency limit,
one progress display. The cache shares each variant's answers with later calls, so adding a
model to a comparison pays only for that model's jobs.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from . import _api
from ._cache import resolve_cache
from ._exceptions import ConfigurationError
from ._fold import Folding
from ._options import check_options
from ._plan import DEFAULT_MODEL, build_plan
from ._run import Run, new_run_id
from ._run_record import record_run
from ._variants import Block, check_samples, combine, sample_plan

__all__ = ["compare", "start_compare", "variant_names"]

#: Options of ``start`` that are about where and how to run, not about the requests.
_RUN_OPTIONS = ("client", "api_key", "base_url", "data_plane_id", "progress", "cache")
_NOT_HERE = ("only_failed", "model", "samples")


def _model_name(model: str) -> str:
    """A short name for a model id: ``anthropic.claude-haiku-4.5`` -> ``claude-haiku-4.5``."""
    return model.split(".", 1)[1] if "." in model else model


def _as_mapping(value: Any, what: str, name: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        items = dict(value)
    elif isinstance(value, (list, tuple)):
        items = {name(v): v for v in value}
        if len(items) < len(value):
            items = {str(v): v for v in value}
    else:
        raise ConfigurationError(
            f"{what}= must be a list or a mapping {{name: value}}; got {type(value).__name__}."
        )
    if not items:
        raise ConfigurationError(f"{what}= is empty; give at least one.")
    for key, item in items.items():
        if not isinstance(key, str) or not key or not isinstance(item, str) or not item:
            raise ConfigurationError(
                f"{what}= needs non-empty string names and values; got {key!r}: {item!r}."
            )
        if any(ch in key for ch in "[]"):
            raise ConfigurationError(f"variant name {key!r} may not contain '[' or ']'.")
    return items


def variant_names(
    models: Mapping[str, str], prompts: Mapping[str, str | None]
) -> dict[str, tuple[str, str | None]]:
    """``{variant name: (model, template)}``: model names, prompt names, or ``model/prompt``."""
    out: dict[str, tuple[str, str | None]] = {}
    for (m_name, model), (p_name, template) in itertools.product(models.items(), prompts.items()):
        if len(prompts) == 1:
            name = m_name
        elif len(models) == 1:
            name = p_name
        else:
            name = f"{m_name}/{p_name}"
        out[name] = (model, template)
    return out


def start_compare(
    df: pd.DataFrame,
    prompt: str | None = None,
    *,
    output: Any,
    models: Sequence[str] | Mapping[str, str] | None = None,
    prompts: Mapping[str, str] | None = None,
    samples: int = 1,
    **options: Any,
) -> Run:
    """:func:`compare` without waiting: the :class:`~narrative_pandas.Run` of the comparison.

    Takes the arguments of :func:`compare`. ``run.result()`` returns what ``compare`` returns;
    ``run.partial()`` the same shape so far (a row some variant has not finished is pending:
    NA answers and agreement); ``run.status()["variants"]`` the counts per variant; and
    ``npd.attach(run.id, cache=...)`` (with a disk cache) finishes it in a new process.

    Examples
    --------
    >>> run = df.narrative.start_compare("Review: {review}", output=Sentiment,
    ...     models={"haiku": "anthropic.claude-haiku-4.5",
    ...             "sonnet": "anthropic.claude-sonnet-4.5"})             # doctest: +SKIP
    >>> run.status()["variants"]["sonnet"]["completed"]                   # doctest: +SKIP
    12
    >>> run.partial()[["label[haiku]", "label[sonnet]", "agreement"]]     # doctest: +SKIP
    >>> cmp = run.result()                                                # doctest: +SKIP
    """
    check_options(
        "compare",
        {**options, "output": output, "models": models, "prompts": prompts, "samples": samples},
    )
    refused = sorted(set(options) & set(_NOT_HERE))
    if refused:
        raise ConfigurationError(
            f"compare() does not take {', '.join(map(repr, refused))}: pass models=[...] for "
            "several models (or one), and compare the full frame."
        )
    samples = check_samples(samples)
    model_map = _as_mapping(
        models if models is not None else [DEFAULT_MODEL], "models", _model_name
    )
    if prompts is not None and prompt is not None:
        raise ConfigurationError(
            "pass either prompt (one template) or prompts={'name': template, ...}, not both."
        )
    prompt_map: dict[str, str | None] = (
        dict(_as_mapping(prompts, "prompts", str)) if prompts is not None else {"prompt": prompt}
    )
    variants = variant_names(model_map, prompt_map)
    run_options = {k: options.pop(k) for k in _RUN_OPTIONS if k in options}
    settings = _api.target_settings(
        run_options.get("client"),
        run_options.get("api_key"),
        run_options.get("base_url"),
        run_options.get("data_plane_id"),
    )
    cache = resolve_cache(run_options.get("cache", True))
    blocks: list[Block] = []
    plans = {}
    for name, (model, template) in variants.items():
        plan = build_plan(df, template, output=output, settings=settings, model=model, **options)
        plans[name] = plan
        blocks.extend(Block(name, s, sample_plan(plan, s)) for s in range(samples))
    first = next(iter(plans.values()))
    layout = _api.result_layout(
        first,
        cache,
        prompt=next(iter(prompt_map.values())),
        system=options.get("system"),
        messages=options.get("messages"),
    )
    prefix = first.prefix
    layout["variants"] = {
        name: {
            "model": model,
            "prompt": template,
            "columns": {f: f"{prefix}{f}[{name}]" for f in layout["fields"]},
            "error_column": f"{prefix}narrative_error[{name}]",
            "status_column": f"{prefix}narrative_status[{name}]",  # where runs report a status
        }
        for name, (model, template) in variants.items()
    }
    combined = combine(blocks)
    folding = Folding.of(df, blocks, prefix=prefix, layout=layout)
    run_id = new_run_id()
    if cache is not None and cache.persistent:
        record_run(cache, run_id, combined, settings, folding=folding)
    run = Run(
        combined,
        settings=settings,
        cache=cache,
        client=run_options.get("client"),
        progress=run_options.get("progress"),
        run_id=run_id,
        folding=folding,
    )
    return run._launch()


def compare(
    df: pd.DataFrame,
    prompt: str | None = None,
    *,
    output: Any,
    models: Sequence[str] | Mapping[str, str] | None = None,
    prompts: Mapping[str, str] | None = None,
    samples: int = 1,
    **options: Any,
) -> pd.DataFrame:
    """Run the same rows through several models and/or prompts and put the answers side by side.

    Every variant (each model of ``models``, each template of ``prompts``, or every pair of
    the two) runs over the same rows in one run: one cache, one concurrency limit, one progress
    display. A later comparison with one more variant pays only for the new one.

    Parameters
    ----------
    prompt : str, optional
        The template, when only models vary.
    output : pydantic model class or JSON Schema dict
        As for ``infer``.
    models : list of model ids, or {name: model id}
        Default: the default model. A list names variants by the id without its provider
        (``claude-haiku-4.5``); a mapping names them (``{"haiku": "anthropic.claude-haiku-4.5"}``).
    prompts : {name: template}, optional
        Templates to compare (instead of ``prompt``).
    samples : int
        Jobs per row and variant, as for ``infer``.
    **options
        Any other option of ``infer`` (``system``, ``temperature``, ``cache``, ``concurrency``...).

    Returns
    -------
    DataFrame
        The input columns; then for each variant its output and metadata columns named
        ``<column>[<variant>]`` (``label[haiku]``, ``narrative_error[haiku]``); then one
        ``agreement[<field>]`` per output field (the share of the variants that answered the
        row which agree with the majority; 1.0 when all agree), ``agreement`` (the lowest of
        those) and ``narrative_error`` (``"<variant>: <why>"`` for each variant that failed the
        row). Variant names combine as ``<model>/<prompt>`` when both vary.
        ``attrs["narrative"]["variants"]`` maps each variant to its ``model``, ``prompt``,
        ``columns`` ({field: column}), ``error_column`` and ``counts``;
        ``attrs["narrative"]["agreement_columns"]`` maps each field to its agreement column.

    Examples
    --------
    >>> cmp = df.narrative.compare("Review: {review}", output=Sentiment,
    ...     models={"haiku": "anthropic.claude-haiku-4.5",
    ...             "sonnet": "anthropic.claude-sonnet-4.5"})             # doctest: +SKIP
    >>> cmp[["review", "label[haiku]", "label[sonnet]", "agreement[label]"]]  # doctest: +SKIP
    >>> cmp.narrative.evaluate("true_label")                              # doctest: +SKIP
    """
    return start_compare(
        df, prompt, output=output, models=models, prompts=prompts, samples=samples, **options
    ).result()
