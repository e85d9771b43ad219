"""The public verbs: ``start``, ``infer``, ``ainfer``, ``preview`` and ``attach``.

``start`` is the one code path: it checks everything, renders every row, and launches a
:class:`~narrative_pandas.Run`. ``infer`` is ``start(...).result()`` and ``ainfer`` is
``await start(...)``. The accessor in ``_accessor`` only forwards here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
from pydantic import BaseModel

from ._cache import Cache, resolve_cache
from ._config import Settings, resolve_settings
from ._engine import EngineOptions
from ._exceptions import ConfigurationError
from ._fold import Folding
from ._frame import METADATA_COLUMNS, output_column_names
from ._job_request import JobRequest
from ._options import check_options
from ._plan import DEFAULT_CONCURRENCY, DEFAULT_MODEL, RunPlan, build_plan, no_cyclic_gc
from ._resultinfo import result_attrs
from ._run import Run, new_run_id
from ._run_record import load_frame, load_plan, record_run, row_counts
from ._schema import OutputSpec
from ._template import MessageTemplates
from ._variants import Block, check_samples, combine, sample_plan

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["ainfer", "attach", "infer", "preview", "start"]

F = TypeVar("F", bound=Callable[..., Any])


def start(df: pd.DataFrame, prompt: str | None = None, **options: Any) -> Run:
    """Replaced below by the docstring and signature of :func:`_start`."""
    check_options("start", options)
    return _start(df, prompt, **options)


def _start(
    df: pd.DataFrame,
    prompt: str | None = None,
    *,
    output: type[BaseModel] | Mapping[str, Any],
    system: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    model: str = DEFAULT_MODEL,
    data_plane_id: str | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    client: Client | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop_sequences: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    poll_interval: float | None = None,
    timeout: float | None = None,
    errors: str = "coerce",
    missing: str = "empty",
    prefix: str = "",
    flatten: bool = True,
    progress: Any = None,
    cache: bool | str | Cache | None = True,
    refresh: bool = False,
    max_total_tokens: int | None = None,
    only_failed: pd.DataFrame | None = None,
    on_interrupt: str = "raise",
    samples: int = 1,
    examples: pd.DataFrame | None = None,
) -> Run:
    """Start a run in the background and return its :class:`~narrative_pandas.Run` at once.

    Every row of ``df`` becomes one inference job (identical requests share one job); the jobs
    run concurrently on the service while the notebook stays usable.

    Parameters
    ----------
    df : DataFrame
        The rows to label. It is never modified.
    prompt : str
        The user-message template: ``{column}`` placeholders, format specs (``{price:.2f}``),
        ``{{``/``}}`` escapes; a whole placeholder is one column name (``{unit price}``), and
        backticks quote names with ``:`` or ``!`` in them.
    output : pydantic model class or JSON Schema dict
        The structure of each answer; becomes ``output_format_schema`` and the typed columns.
    system : str, optional
        A system-message template.
    messages : list of {"role", "text"} dicts, optional
        Full multi-turn control instead of ``prompt``/``system`` (few-shot ``assistant`` turns).
    model : str
        A model id, e.g. ``"anthropic.claude-haiku-4.5"``. Unknown ids are sent with a warning.
    data_plane_id, api_key, base_url : str, optional
        Override the settings (else environment, else ``configure``; ``use_sandbox`` wins over
        the environment).
    client : Client, optional
        An explicit client; wins over all settings.
    max_tokens, temperature, top_p, stop_sequences
        The inference config (``max_tokens`` > 0; ``temperature``/``top_p`` in [0, 1]).
    tags : list of str, optional
        Labels added to every job.
    concurrency : int
        Jobs unfinished at once (not HTTP connections). Default 32.
    poll_interval : float, optional
        Fixed seconds between polls; by default it adapts to how long jobs have been waiting.
    timeout : float, optional
        Seconds a job may stay unfinished before its row is given up (the job stays journaled).
    errors : {"coerce", "raise"}
        "coerce" (default): failed rows say why in ``narrative_error`` and one
        ``RowsFailedWarning`` summarises. "raise": after the run, raise ``RowsFailedError``
        whose ``.result`` is the whole frame. Rows a cancel, an interrupt or the token budget
        stopped are not failures: a ``RowsStoppedWarning`` says how many (run the same call
        again to finish them).
    missing : {"empty", "skip"}
        Missing values render as "" (default), or the row is skipped with a reason.
    prefix : str
        Prefix for every new column.
    flatten : bool
        Flatten nested objects into ``parent.child`` columns (default) or keep dicts.
    progress : None, bool, callable
        None or True: a widget in Jupyter (a static HTML summary once the run ends), else text
        on stderr (a live line in a terminal; plain lines every 10 s in a file or log).
        False: nothing. A callable receives every ``ProgressEvent`` instead.
    cache : True, False, path or Cache
        True (default): the process's in-memory cache. A path: a SQLite file that survives
        restarts and is shared by processes. False: no cache and no journal.
    refresh : bool
        Ignore cache hits (results are still stored).
    max_total_tokens : int, optional
        Stop submitting once the run's tokens (completed plus an estimate for those in flight)
        would pass this budget; the rest end with a ``narrative_error`` that says so.
    only_failed : DataFrame, optional
        A previous result of this call on the same frame: only its rows without a completed
        answer (``narrative_status`` failed, invalid, timed_out, stopped) are run, and the
        returned frame is that result with those rows replaced.
    on_interrupt : {"raise", "return"}
        On Ctrl-C: re-raise ``KeyboardInterrupt`` (default) or return the partial frame.
    samples : int
        Jobs per row (default 1). With ``samples=k`` each row is sent ``k`` times as distinct
        jobs (each its own cache key, journal entry and ``npd-sample-<s>`` tag); the frame holds
        the majority answer per field, ``narrative_agreement`` (the share of the row's completed
        samples that agree with it; the lowest over the fields, with one
        ``narrative_agreement[<field>]`` each when there are several) and ``narrative_samples``
        (completed samples). Token columns and the report count every sample.
        ``run.partial()`` and ``attach`` give the same shape; a row with a sample still in
        flight shows as pending there (NA answer and agreement).
    examples : DataFrame, optional
        Labelled rows for few-shot prompting: each becomes the template's turns rendered from
        that row plus an ``assistant`` turn holding its answer (the output-field columns) as
        JSON, after the system message and ahead of the row's own turn. Checked up front.

    Returns
    -------
    Run

    Examples
    --------
    >>> import narrative_pandas as npd                                   # doctest: +SKIP
    >>> run = df.narrative.start("Review: {review}", output=Sentiment)   # doctest: +SKIP
    >>> run.status()["completed"]                                        # doctest: +SKIP
    120
    >>> out = run.result()                                               # doctest: +SKIP
    """
    settings = target_settings(client, api_key, base_url, data_plane_id)
    resolved_cache = resolve_cache(cache)
    samples = check_samples(samples)
    if samples > 1 and only_failed is not None:
        raise ConfigurationError(
            "only_failed= and samples= cannot be combined; re-run the whole call (finished "
            "samples come from the cache)."
        )

    target = df
    positions: list[int] | None = None
    if only_failed is not None:
        positions = _failed_positions(df, only_failed, prefix)
        target = df.iloc[positions]
    plan = build_plan(
        target,
        prompt,
        output=output,
        settings=settings,
        system=system,
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_sequences=stop_sequences,
        tags=tags,
        concurrency=concurrency,
        poll_interval=poll_interval,
        timeout=timeout,
        errors=errors,
        missing=missing,
        prefix=prefix,
        flatten=flatten,
        max_total_tokens=max_total_tokens,
        refresh=refresh,
        on_interrupt=on_interrupt,
        examples=examples,
    )
    layout = result_layout(plan, resolved_cache, prompt=prompt, system=system, messages=messages)
    on_finish: Callable[[Run, pd.DataFrame], pd.DataFrame] | None = _annotate(layout)
    folding: Folding | None = None
    if only_failed is not None and positions is not None:
        on_finish = _annotate(layout, _merge_into(only_failed, positions, plan))
    elif samples > 1:
        blocks = [Block(None, s, sample_plan(plan, s)) for s in range(samples)]
        folding = Folding.of(df, blocks, prefix=plan.prefix, layout=layout)
        on_finish = None
        plan = combine(blocks)
    run_id = new_run_id()
    if resolved_cache is not None and resolved_cache.persistent:
        record_run(resolved_cache, run_id, plan, settings, folding=folding)
    run = Run(
        plan,
        settings=settings,
        cache=resolved_cache,
        client=client,
        progress=progress,
        run_id=run_id,
        on_finish=on_finish,
        folding=folding,
    )
    return run._launch()


start.__doc__ = _start.__doc__
start.__signature__ = inspect.signature(_start)  # type: ignore[attr-defined]


def target_settings(
    client: Client | None, api_key: str | None, base_url: str | None, data_plane_id: str | None
) -> Settings:
    """The connection settings of a run: the client's, else arguments/sandbox/env/configure."""
    if client is not None:
        settings = client.settings
        if data_plane_id is None and client.data_plane_id:
            data_plane_id = client.data_plane_id
        settings = Settings(
            api_key=settings.api_key,
            base_url=settings.base_url,
            data_plane_id=data_plane_id or settings.data_plane_id,
            allow_insecure_http=settings.allow_insecure_http,
            key_source=f"the client= given ({settings.key_source})",
        )
    else:
        settings = resolve_settings(api_key, base_url, data_plane_id)
        settings.require_key()
    settings.require_data_plane()
    return settings


def result_layout(
    plan: RunPlan,
    cache: Cache | None,
    *,
    prompt: str | None,
    system: str | None,
    messages: Sequence[Mapping[str, str]] | None,
) -> dict[str, Any]:
    """What ``evaluate``/``review`` need to read a result (see ``_resultinfo``)."""
    try:
        used = list(
            MessageTemplates.build(prompt, system=system, messages=messages)
            .bind(list(plan.df.columns))
            .used_columns
        )
    except Exception:  # the plan already checked the template; this is only a description
        used = []
    path = getattr(cache, "path", None) if cache is not None and cache.persistent else None
    fields = [c.name for c in plan.spec.columns(flatten=plan.flatten)]
    return result_attrs(
        fields=fields,
        input_columns=list(plan.df.columns),
        template_columns=used,
        schema=plan.spec.schema,
        cache_path=str(path) if path is not None else None,
        prefix=plan.prefix,
    )


def _annotate(
    layout: dict[str, Any], then: Callable[[Run, pd.DataFrame], pd.DataFrame] | None = None
) -> Callable[[Run, pd.DataFrame], pd.DataFrame]:
    """An ``on_finish`` adding the result's layout to ``attrs["narrative"]`` (after ``then``)."""

    def finish(run: Run, frame: pd.DataFrame) -> pd.DataFrame:
        if then is not None:
            frame = then(run, frame)
        frame.attrs["narrative"] = {**frame.attrs.get("narrative", {}), **layout}
        return frame

    return finish


def _same_signature(func: F) -> F:
    """Give ``func`` the signature of :func:`start` (so ``?`` in Jupyter lists every option)."""
    params = list(inspect.signature(_start).parameters.values())
    own = inspect.signature(func)
    func.__signature__ = own.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=own.return_annotation
    )
    return func


@_same_signature
def infer(df: pd.DataFrame, prompt: str | None = None, **options: Any) -> pd.DataFrame:
    """Run every row through the model and return the frame with typed output columns.

    Blocks until done; works in a script and inside Jupyter's running loop. It is
    ``start(...).result()``: see :func:`start` for every option.

    Returns
    -------
    DataFrame
        ``df``'s columns, one column per output property, then ``narrative_error``,
        ``narrative_job_id`` and the token columns, on ``df``'s index and order. The run report
        is in ``out.attrs["narrative"]``.

    Examples
    --------
    >>> from typing import Literal
    >>> from pydantic import BaseModel
    >>> import narrative_pandas as npd
    >>> class Sentiment(BaseModel):
    ...     label: Literal["positive", "negative", "neutral"]
    >>> out = npd.infer(df, "Review: {review}", output=Sentiment)       # doctest: +SKIP
    >>> out[["review", "label", "narrative_error"]]                    # doctest: +SKIP
    """
    check_options("infer", options)
    return _start(df, prompt, **options).result()


@_same_signature
async def ainfer(df: pd.DataFrame, prompt: str | None = None, **options: Any) -> pd.DataFrame:
    """``await``-able :func:`infer` (same options), for top-level ``await`` in notebooks.

    Examples
    --------
    >>> out = await df.narrative.ainfer("Review: {review}", output=Sentiment)  # doctest: +SKIP
    """
    check_options("ainfer", options)
    return await _start(df, prompt, **options)


@_same_signature
def preview(df: pd.DataFrame, prompt: str | None = None, **options: Any) -> pd.DataFrame:
    """The requests :func:`infer` would send, without sending anything (no key needed).

    Returns
    -------
    DataFrame
        On ``df``'s index: ``messages`` (the rendered turns), ``body`` (the JSON body as sent,
        a dict), ``request_key`` (rows with the same key share one job) and
        ``estimated_prompt_tokens``.

    Examples
    --------
    >>> df.narrative.preview("Review: {review}", output=Sentiment).body.iloc[0]  # doctest: +SKIP
    """
    check_options("preview", options)
    plan_options = set(inspect.signature(build_plan).parameters) - {"df", "prompt", "settings"}
    kwargs = {k: v for k, v in options.items() if k in plan_options}
    settings = resolve_settings(None, options.get("base_url"), options.get("data_plane_id"))
    with no_cyclic_gc():  # 100,000 rows: a third of the time went to the collector
        plan = build_plan(
            df, prompt, settings=settings, data_plane_placeholder="<data_plane_id>", **kwargs
        )
        bodies = plan.row_bodies()
        message_lists = [None if body is None else body["messages"] for body in bodies]
        tokens = plan.row_token_estimates()
        view: pd.DataFrame = pd.DataFrame(
            {
                "messages": pd.Series(message_lists, index=df.index, dtype=object),
                "body": pd.Series(bodies, index=df.index, dtype=object),
                "request_key": pd.Series(plan.row_keys, index=df.index, dtype="string"),
                "estimated_prompt_tokens": pd.Series(tokens, index=df.index, dtype="Int64"),
            },
            index=df.index,
        )
    return view


def _failed_positions(df: pd.DataFrame, previous: pd.DataFrame, prefix: str) -> list[int]:
    error_column = prefix + "narrative_error"
    if not isinstance(previous, pd.DataFrame) or error_column not in previous.columns:
        raise ConfigurationError(
            f"only_failed must be a previous result of infer (a DataFrame with a "
            f"{error_column!r} column); pass prefix= if that result used one."
        )
    if len(previous) != len(df) or not previous.index.equals(df.index):
        raise ConfigurationError(
            "only_failed must be the result of infer on this same frame (same length and index); "
            f"got {len(previous)} rows for a frame of {len(df)}."
        )
    status_column = prefix + "narrative_status"
    if status_column in previous.columns:  # every row without a completed answer
        unfinished = previous[status_column].astype(object) != "completed"
        return [int(i) for i in unfinished.to_numpy().nonzero()[0]]
    return [int(i) for i in previous[error_column].notna().to_numpy().nonzero()[0]]


def _merge_into(
    previous: pd.DataFrame, positions: list[int], plan: RunPlan
) -> Callable[[Run, pd.DataFrame], pd.DataFrame]:
    """Put the re-run rows back into the previous result, in place of the failed ones."""

    def merge(run: Run, fresh: pd.DataFrame) -> pd.DataFrame:
        merged = previous.copy()
        new_columns = output_column_names(
            plan.df.columns, plan.spec, prefix=plan.prefix, flatten=plan.flatten
        ) + [plan.prefix + name for name in METADATA_COLUMNS]
        for column in new_columns:
            if column not in merged.columns:
                merged[column] = pd.Series(pd.NA, index=merged.index, dtype=fresh[column].dtype)
            location = merged.columns.get_loc(column)
            values = merged[column].array.copy()
            values[positions] = fresh[column].array
            merged.isetitem(location, pd.Series(values, index=merged.index, name=column))
        merged.attrs["narrative"] = {**run.report, "rerun_rows": len(positions)}
        result: pd.DataFrame = merged
        return result

    return merge


def attach(
    run_id: str,
    *,
    cache: str | Cache,
    df: pd.DataFrame | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    client: Client | None = None,
    progress: Any = None,
    concurrency: int | None = None,
) -> Run:
    """Re-attach to a run recorded in a disk cache (e.g. after a kernel restart) and finish it.

    Jobs the run already submitted are polled, never resubmitted; finished results come from the
    cache; only rows never submitted are sent. A ``samples=k`` or ``compare`` run comes back in
    the shape it returns (majority answers and agreement; variants side by side), from
    ``result()`` and ``partial()`` alike. The input frame is rebuilt from the cache file
    (stored once per distinct frame, column by column); a frame the cache could not store (a
    column of dicts, periods...) needs ``df=`` (the same frame), and the error says so.

    Examples
    --------
    >>> run = npd.attach("20261126-101500-1a2b3c4d", cache="labels.sqlite")  # doctest: +SKIP
    >>> out = run.result()                                                 # doctest: +SKIP
    """
    resolved = resolve_cache(cache)
    if resolved is None or not resolved.persistent:
        raise ConfigurationError(
            "attach needs the disk cache the run was started with, e.g. cache='labels.sqlite'."
        )
    record = resolved.load_run(run_id)
    if record is None:
        known = ", ".join(r.get("id", "?") for r in resolved.list_runs()[:5]) or "none"
        raise ConfigurationError(f"no run {run_id!r} in this cache (recent runs: {known}).")
    if df is None:
        df = load_frame(resolved, run_id, record)
    elif not isinstance(df, pd.DataFrame):
        raise ConfigurationError(f"df must be the run's input DataFrame, got {type(df).__name__}.")
    folded = record.get("folding")  # samples=k / compare: the run's rows are blocks of df's
    rows = folded["rows"] if folded else record["rows"]
    if len(df) != rows:
        raise ConfigurationError(
            f"df has {len(df)} rows but run {run_id!r} had {rows}; pass the same frame."
        )
    folding = Folding.from_record(df, folded) if folded else None
    if folding is not None:
        df = pd.DataFrame(index=pd.RangeIndex(record["rows"]))
    if client is not None:
        settings = client.settings
    else:
        settings = resolve_settings(
            api_key, base_url or record.get("base_url"), record.get("data_plane_id")
        )
        settings.require_key()
    spec = OutputSpec.from_output(record["schema"])
    stored = load_plan(resolved, run_id, record)
    bodies: dict[str, dict[str, Any]] = stored["bodies"]
    counts = row_counts(stored["row_keys"])
    estimates = stored.get("prompt_tokens_estimates", {})
    requests = [
        JobRequest.from_body(
            key,
            body,
            rows=counts.get(key, 1),
            prompt_tokens_estimate=int(estimates.get(key, 1)),
        )
        for key, body in bodies.items()
    ]
    saved = record.get("options", {})
    options = EngineOptions(
        concurrency=concurrency or saved.get("concurrency") or DEFAULT_CONCURRENCY,
        poll_interval=saved.get("poll_interval"),
        timeout=saved.get("timeout"),
        max_total_tokens=saved.get("max_total_tokens"),
        data_plane_id=record.get("data_plane_id"),
    )
    plan = RunPlan(
        df=df,
        spec=spec,
        row_keys=list(stored["row_keys"]),
        skipped={int(k): v for k, v in stored.get("skipped", {}).items()},
        requests=requests,
        options=options,
        prefix=record.get("prefix", ""),
        flatten=record.get("flatten", True),
        errors=record.get("errors", "coerce"),
        model=record.get("model", DEFAULT_MODEL),
    )
    run = Run(
        plan,
        settings=settings,
        cache=resolved,
        client=client,
        progress=progress,
        run_id=run_id,
        folding=folding,
    )
    return run._launch()
