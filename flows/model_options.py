"""Command-line options derived from a pydantic configuration model, and errors that name what was typed.
(Just over ~400 lines: one mechanism, flags from the models, read top to bottom.)

``model_options(TrainStageConfig)`` gives one ``--flag`` per field a user sets (nested models flattened:
``optimizer.lr`` is ``--optimizer-lr``), typed from the field's annotation, with the field's description as
help, its default shown (and, where a ``preset`` field changes it, each preset's value), in the help panel the
model names for it (``ConfigModel.cli_panels``). A field added to the model therefore appears on the command
line by itself: the CLI does not re-declare what the model already says. ``with_options`` adds such options to
a typer command function; ``given_values`` turns the values the user gave into the nested dict the model
validates, and records which flag set which field so that ``report_validation`` can name ``--size`` rather
than ``decode.short_side``. A field's ``Cli`` marker (``cpfs.config.base``) names its flag or its children's
prefix in the model itself. ``build_config`` is the one way a command turns ``--config`` and the flags given
into its model: every option defaults to None (not given), so a flag never overwrites a ``--config`` value it
was not given for.

The naming rule: a flag is the field's ``Cli(flag=...)``, else its path below the nearest ``Cli(prefix=...)``
joined by dashes; when two fields would get one flag (``cpfs run``: training's and evaluation's ``threads``),
each gets its top-level field's name in front (``--train-threads``, ``--evaluate-threads``), never only one.

Nothing here imports torch, Prefect, OpenCV, zarr or dask: building every command's options and its help
takes the configuration models and typer only.
"""

from __future__ import annotations

import collections
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel, ValidationError

from cpfs.config.base import COMMON_PANEL, Cli, ConfigFileError, deep_merge, load_config_file

Loc = tuple[str, ...]  # a field's path in the model tree, e.g. ("optimizer", "lr")


@dataclass(frozen=True)
class ModelOption:
    """One command-line option standing for one (possibly nested) model field."""

    name: str  # the command function's parameter name: "optimizer_lr"
    flag: str  # what the user types: "--optimizer-lr"
    loc: Loc  # the field it sets: ("optimizer", "lr")
    kind: Literal["scalar", "bool", "list", "json", "parse"]  # how the typed text becomes the field's value
    annotation: Any  # the typer annotation of the parameter
    help: str
    parse: Callable[[str], dict[str, Any]] | None = None  # kind "parse": text -> {sibling field: value}
    panel: str | None = None  # the help panel it is listed in
    default: str | None = None  # the default as the help shows it (with the presets' values); None: none shown
    example: str | None = None  # kind "json": a value in the expected format, for error messages
    # kind "bool": the hidden ``--no-x`` that sets False (the help shows ``--x`` only, with ``--no-x`` in its text:
    # a column of ``--no-...`` forms beside the flags would not fit 80 columns), its parameter and annotation
    off_name: str | None = None
    off_annotation: Any = None


@dataclass(frozen=True)
class _Field:
    """A leaf field found by ``_walk``, before its flag is settled."""

    loc: Loc
    stem: str  # the flag without its dashes
    info: Any  # pydantic FieldInfo
    tp: Any  # the annotation, Optional stripped
    cli: Cli
    panel: str | None


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _cli(info: Any) -> Cli:
    """The field's ``Cli`` marker (``cpfs.config.base``), or an empty one."""
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _titled(title: str, context: str | None) -> str:
    """A model's own panel title inside the panel its parent gave it ("Training: Model"); Common stays Common."""
    return title if context is None or title == COMMON_PANEL else f"{context}: {title}"


def _walk(model: type[BaseModel], prefix: Loc, flag_prefix: str | None, skip: set[Loc], context: str | None,
          inherited: str | None) -> Iterator[_Field]:
    """Every leaf field of ``model`` not in ``skip``, depth first, with its flag stem and help panel."""
    panels = getattr(model, "cli_panels", {})
    own = {name: title for title, names in panels.items() for name in names}
    rank = {title: i for i, title in enumerate(panels)}
    # The fields no panel of this model lists first (nested models, whose panels come next), then the listed
    # ones panel by panel as the model declares them: the help's panels appear in that order.
    ordered = sorted(model.model_fields.items(), key=lambda kv: (kv[0] in own, rank.get(own.get(kv[0]), 0)))
    for field_name, info in ordered:
        key = info.alias or field_name
        loc = (*prefix, key)
        if loc in skip:
            continue
        cli = _cli(info)
        tp = _strip_optional(info.annotation)
        stem = "-".join(p for p in (flag_prefix, key.replace("_", "-")) if p) if flag_prefix is not None \
            else "-".join(loc).replace("_", "-")
        listed = own.get(field_name)
        if _is_model(tp):
            sub_context = _titled(listed, context) if listed else context
            yield from _walk(tp, loc, cli.prefix if cli.prefix is not None else stem, skip, sub_context,
                             sub_context if listed else inherited)
        else:
            yield _Field(loc, (cli.flag or "--" + stem)[2:], info, tp, cli,
                         _titled(listed, context) if listed else inherited)


def _flags(fields: list[_Field]) -> list[str]:
    """The flag of each field by the naming rule (module docstring): a stem two fields share gets each one's
    top-level field in front."""
    count = collections.Counter(f.stem for f in fields)
    flags = [f"--{f.loc[0].replace('_', '-')}-{f.stem}" if count[f.stem] > 1 else f"--{f.stem}" for f in fields]
    clash = sorted(flag for flag, n in collections.Counter(flags).items() if n > 1)
    if clash:
        raise ValueError(f"flags {clash} stand for more than one field: give one of them a Cli(flag=...)")
    return flags


def _at(data: Any, loc: Loc) -> tuple[bool, Any]:
    """``data[loc[0]][loc[1]]...`` of a model dump, and whether it is there."""
    for part in loc:
        if not isinstance(data, Mapping) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _nested(loc: Loc, value: Any) -> dict:
    out: Any = value
    for part in reversed(loc):
        out = {part: out}
    return out


def _show(value: Any, kind: str) -> str:
    """A value as the help shows it: a boolean as on or off, JSON for lists, tuples and dicts."""
    if kind == "bool":
        return "on" if value else "off"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _example(tp: Any) -> str:
    """A value of type ``tp`` in the JSON the option reads, for an error message that says the format."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_example(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        items = [args[0], args[0]] if (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else list(args)
        return "[" + ", ".join(_example(a) for a in items) + "]"
    if origin is dict or tp is dict:
        return '{"key": "value"}'
    return {int: "1", float: "0.5", str: '"text"', bool: "true"}.get(tp, "a JSON value")


def _defaults(model: type[BaseModel], fields: list[_Field], kinds: list[str]) -> list[str | None]:
    """What each field's help shows as its default: the value of ``model`` built from nothing (so a value one
    field derives from another, as ``evaluate.out`` from ``run_dir``, is shown as it comes out), else the
    field's own default; and where a ``preset`` field (a choice among named presets) gives it another value,
    each preset's, "400; cpu-hour: 1000, paper: 100000"."""
    try:
        base = model.model_validate({}).model_dump(mode="json", by_alias=True)
    except ValidationError:
        base = {}
    variants: list[tuple[Loc, str, dict]] = []
    for f in fields:
        if f.loc[-1] == "preset" and typing.get_origin(f.tp) is Literal:
            for choice in typing.get_args(f.tp):
                try:
                    dump = model.model_validate(_nested(f.loc, choice)).model_dump(mode="json", by_alias=True)
                except ValidationError:
                    continue
                variants.append((f.loc, choice, dump))
    out: list[str | None] = []
    for f, kind in zip(fields, kinds):
        found, value = _at(base, f.loc)
        if not found:
            if f.info.is_required():
                out.append(None)
                continue
            value = f.info.get_default(call_default_factory=True)
            value = json.loads(json.dumps(value, default=str)) if value is not None else None
        text = _show(value, kind)
        presets = []
        for preset_loc, choice, dump in variants:
            if f.loc == preset_loc or f.loc[:len(preset_loc) - 1] != preset_loc[:-1]:
                continue  # the preset field itself, or a field its model does not hold
            there, other = _at(dump, f.loc)
            if there and other != value:
                presets.append(f"{choice}: {_show(other, kind)}")
        out.append(text + ("; " + ", ".join(presets) if presets else ""))
    return out


def model_options(model: type[BaseModel], *, exclude: Iterable[str | Loc] = (), panel: str | None = None) -> list[ModelOption]:
    """Options for every field of ``model`` (recursing into nested models), except those in ``exclude``
    (top-level names, or paths such as ``("train", "store")``), listed panel by panel: Common first, then in
    the order the models name their panels. A field no model gives a panel goes to ``panel``. Scalars and
    ``Literal`` choices become typed options, booleans ``--x/--no-x``, lists of strings repeatable options,
    and anything else (tuples, unions of a choice and a number, dicts) an option whose text is read as JSON
    when it parses as JSON and as a plain string otherwise."""
    skip = {(e,) if isinstance(e, str) else tuple(e) for e in exclude}
    fields = list(_walk(model, (), None, skip, None, panel))
    flags = _flags(fields)
    kinds, types_ = [], []
    for f in fields:
        tp = f.tp
        if f.cli.parse is not None:
            kind, typ = "parse", str
        elif tp in (int, float, str):
            kind, typ = "scalar", tp
        elif tp is bool:
            kind, typ = "bool", bool
        elif typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)):
            kind, typ = "scalar", str
        elif typing.get_origin(tp) is list and typing.get_args(tp) == (str,):
            kind, typ = "list", list[str]
        else:
            kind, typ = "json", str
        kinds.append(kind)
        types_.append(typ)
    defaults = _defaults(model, fields, kinds)
    out: list[ModelOption] = []
    for f, flag, kind, typ, default in zip(fields, flags, kinds, types_, defaults):
        help_text = f.info.description or f.loc[-1].replace("_", " ")
        if typing.get_origin(f.tp) is Literal and kind == "scalar":
            help_text += f" ({', '.join(typing.get_args(f.tp))})"
        elif kind == "list":
            help_text += " (repeatable)"
        elif kind == "bool":
            help_text += f" (off: --no-{flag[2:]})"
        example = None
        if kind == "json":  # the default says the format best; else one made from the type
            first = (default or "None").split("; ")[0]
            example = first if first != "None" else _example(f.tp)
            help_text += " (JSON, or a plain word)"
        # The default goes in the help text: the option's own default is None (not given). "\[": not rich markup.
        # A field whose default is None says in words what None means ("(None: every one)"), or is simply off.
        if default == "None":
            shown = help_text if "None:" in help_text else help_text + " \\[default: not set]"
        else:
            shown = help_text + (f" \\[default: {default.replace('[', chr(92) + '[')}]" if default is not None else "")
        option = typer.Option(flag, help=shown, rich_help_panel=f.panel, show_default=False,
                              metavar={"json": "VALUE", "list": "TEXT"}.get(kind))
        off = typer.Option(f"--no-{flag[2:]}", hidden=True) if kind == "bool" else None
        out.append(ModelOption(name=flag[2:].replace("-", "_"), flag=flag, loc=f.loc, kind=kind,
                               annotation=Annotated[Optional[typ], option], help=help_text, parse=f.cli.parse,
                               panel=f.panel, default=default, example=example,
                               off_name=f"no_{flag[2:].replace('-', '_')}" if off else None,
                               off_annotation=Annotated[Optional[bool], off] if off else None))
    order = list(dict.fromkeys([COMMON_PANEL, *(o.panel for o in out)]))
    return sorted(out, key=lambda o: order.index(o.panel))  # stable: model order within a panel


def with_options(func: Callable[..., Any], options: list[ModelOption]) -> Callable[..., Any]:
    """A typer command function: ``func``'s own parameters plus one keyword parameter per option (default
    None: not given). ``func`` receives them all as keyword arguments."""
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = collections.Counter([p.name for p in own] + [n for o in options for n in (o.name, o.off_name) if n])
    clash = sorted(name for name, n in taken.items() if n > 1)
    if clash:
        raise ValueError(f"options {clash} of the model clash with parameters of {func.__name__}")
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
             for o in options for name, annotation in ((o.name, o.annotation), (o.off_name, o.off_annotation)) if name]

    def command(**kwargs: Any) -> Any:
        return func(**kwargs)

    command.__name__ = func.__name__
    command.__qualname__ = func.__qualname__
    command.__doc__ = func.__doc__
    command.__module__ = func.__module__
    command.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
    return command


def _parse(option: ModelOption, value: Any) -> Any:
    if option.kind != "json":
        return list(value) if option.kind == "list" else value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # a plain word ("median") is the value itself


def given_values(options: list[ModelOption], kwargs: Mapping[str, Any]) -> tuple[dict, dict[Loc, str]]:
    """The options the user gave (not None; an empty repeatable option counts as not given) as a nested
    dict ``{"optimizer": {"lr": 0.001}}``, and ``{loc: flag}`` of each of them for error messages."""
    values: dict = {}
    flags: dict[Loc, str] = {}
    for o in options:
        v = kwargs.get(o.name)
        if o.off_name and kwargs.get(o.off_name):
            if v:
                fail(o.flag, f"given with --no-{o.flag[2:]}: give one of them")
            v = False
        if v is None or (o.kind == "list" and not v):
            continue
        node = values
        for part in o.loc[:-1]:
            node = node.setdefault(part, {})
        if o.kind == "parse":
            try:
                parsed = o.parse(v)
            except ValueError as e:
                fail(o.flag, str(e))
            node.update(parsed)
            flags.update({(*o.loc[:-1], k): o.flag for k in parsed})
        else:
            node[o.loc[-1]] = _parse(o, v)
        flags[o.loc] = o.flag
    return values, flags


def option_flags(options: Iterable[ModelOption]) -> dict[Loc, str]:
    """``{loc: flag}`` of every option (given or not)."""
    return {o.loc: o.flag for o in options}


def _lookup(loc: Loc, table: Mapping[Loc, Any] | None) -> Any:
    """The entry of ``table`` for ``loc`` or the nearest field above it, else None."""
    for n in range(len(loc), 0, -1):
        if table and loc[:n] in table:
            return table[loc[:n]]
    return None


def parameter_name(loc: Iterable[Any], flags: Mapping[Loc, str], config_file: Any = None,
                   known: Mapping[Loc, str] | None = None) -> str:
    """What to call the parameter at ``loc`` in an error: the flag the user typed when one set it (or set
    a field above it, as ``--size`` sets ``decode.size``); else the field's path in the ``--config`` file
    when there is one; else the command's flag for it (``known``), if any; else the field's path."""
    loc = tuple(str(p) for p in loc)
    for table in (flags, None if config_file else known):
        if (name := _lookup(loc, table)) is not None:
            return name
    field = ".".join(loc) or "(the whole configuration)"
    return f"{field} (in --config {config_file})" if config_file else field


def fail(parameter: str, reason: str, code: int = 2) -> typing.NoReturn:
    """The one error style of the command line: ``error: PARAMETER: REASON`` on one line of stderr; exit 2."""
    typer.secho(f"error: {parameter}: {reason}" if parameter else f"error: {reason}", fg="red", err=True)
    raise typer.Exit(code)


def report_validation(e: ValidationError, flags: Mapping[Loc, str], config_file: Any = None,
                      known: Mapping[Loc, str] | None = None, examples: Mapping[Loc, str] | None = None) -> None:
    """Print one line per error, naming the flag (or field), saying the value once and, for a value read as
    JSON, its format (``examples``); exit 2."""
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        loc = tuple(str(p) for p in err["loc"])
        if err["type"] == "missing":
            msg = "required" + (f" (give it on the command line or in --config {config_file})" if config_file else "")
        elif err["type"] not in ("value_error", "assertion_error") and "input" in err:
            msg += f" (got {err['input']!r})"  # pydantic's own messages do not quote the value; ours do
            if (example := _lookup(loc, examples)) is not None:
                msg += f"; expected JSON such as {example}"
        typer.secho(f"error: {parameter_name(loc, flags, config_file, known)}: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def build_config(model: type[BaseModel], options: list[ModelOption], fields: Mapping[str, Any],
                 config_file: Path | None, extra_values: Mapping | None = None,
                 extra_flags: Mapping[Loc, str] | None = None, *,
                 print_config: bool = False) -> tuple[Any, dict[Loc, str], dict[Loc, str]]:
    """``model`` from the ``--config`` file (optional) overridden by the options given in ``fields`` (the
    command's keyword arguments; None: not given, the file's value or the model's default holds) and by
    ``extra_values`` (a command's own arguments, named by ``extra_flags``). Returns the model, ``{loc: flag}``
    of what was given and of every option, for error messages. A wrong value exits 2 naming its flag. With
    ``print_config`` the model is printed as JSON (what the command would run with) and the command exits 0."""
    values, flags = given_values(options, fields)
    values = deep_merge(values, dict(extra_values or {}))
    flags.update(extra_flags or {})
    known = {**option_flags(options), **(extra_flags or {})}
    try:
        data = load_config_file(config_file)
    except ConfigFileError as e:
        fail("--config", str(e))
    try:
        cfg = model.model_validate(deep_merge(data, values))
    except ValidationError as e:
        report_validation(e, flags, config_file, known, {o.loc: o.example for o in options if o.example})
        raise  # unreachable: report_validation exits
    if print_config:
        typer.echo(json.dumps(cfg.model_dump(mode="json", by_alias=True), indent=2))
        raise typer.Exit(0)
    return cfg, flags, known
