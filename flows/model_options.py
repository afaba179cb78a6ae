"""Command-line options derived from a pydantic configuration model, and errors that name what was typed.

``model_options(TrainConfig)`` gives one ``--flag`` per field a user sets (nested models flattened:
``optimizer.lr`` is ``--optimizer-lr``), typed from the field's annotation, with the field's description
as help. A field added to the model therefore appears on the command line by itself: the CLI does not
re-declare what the model already says. ``with_options`` adds such options to a typer command function;
``given_values`` turns the values the user gave into the nested dict the model validates, and records
which flag set which field so that ``report_validation`` can name ``--size`` rather than
``decode.short_side``. A field's ``Cli`` marker (``cpfs.config.base``) names its flag or its children's prefix
in the model itself. ``build_config`` is the one way a command turns ``--config`` and the flags given into its
model: every option defaults to None (not given), so a flag never overwrites a ``--config`` value it was not
given for.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel, ValidationError

from cpfs.config.base import Cli, ConfigFileError, deep_merge, load_config_file

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


def model_options(model: type[BaseModel], *, exclude: Iterable[str | Loc] = (), prefix: Loc = (),
                  flag_prefix: str | None = None, panel: str | None = None,
                  taken: set[str] | None = None) -> list[ModelOption]:
    """Options for every field of ``model`` (recursing into nested models), except those in ``exclude``
    (top-level names, or paths such as ``("train", "store")``). A field's flag is its ``Cli(flag=...)``
    when it has one, else its path below the nearest ``Cli(prefix=...)`` joined by dashes. A flag an earlier
    field already took gets the top-level field's name in front (``--evaluate-threads``). Scalars and
    ``Literal`` choices become typed options, booleans ``--x/--no-x``, lists of strings repeatable options,
    and anything else (tuples, unions of a choice and a number, dicts) an option whose text is read as JSON
    when it parses as JSON and as a plain string otherwise."""
    out: list[ModelOption] = []
    skip = {(e,) if isinstance(e, str) else tuple(e) for e in exclude}
    taken = set() if taken is None else taken
    for field_name, info in model.model_fields.items():
        key = info.alias or field_name
        loc = (*prefix, key)
        if loc in skip:
            continue
        cli = _cli(info)
        tp = _strip_optional(info.annotation)
        stem = "-".join(p for p in (flag_prefix, key.replace("_", "-")) if p) if flag_prefix is not None \
            else "-".join(loc).replace("_", "-")
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            sub_prefix = cli.prefix if cli.prefix is not None else stem
            out.extend(model_options(tp, exclude=skip, prefix=loc, flag_prefix=sub_prefix, panel=panel, taken=taken))
            continue
        flag = cli.flag or "--" + stem
        if flag in taken:
            flag = f"--{loc[0].replace('_', '-')}-{flag[2:]}"
        taken.add(flag)
        name = flag[2:].replace("-", "_")
        help_text = info.description or field_name.replace("_", " ")
        if cli.parse is not None:
            kind, typ = "parse", str
        elif tp in (int, float, str):
            kind, typ = "scalar", tp
        elif tp is bool:
            kind, typ = "bool", bool
        elif typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)):
            kind, typ = "scalar", str
            help_text += f" ({', '.join(typing.get_args(tp))})"
        elif typing.get_origin(tp) is list and typing.get_args(tp) == (str,):
            kind, typ = "list", list[str]
            help_text += " (repeatable)"
        else:
            kind, typ = "json", str
            help_text += " (JSON, or a plain word)"
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, (int, float, str, bool, tuple)) and not isinstance(default, BaseModel):
                help_text += f" [model default: {json.dumps(default) if isinstance(default, tuple) else default}]"
        decl = (f"{flag}/--no-{flag[2:]}",) if kind == "bool" else (flag,)
        annotation = Annotated[Optional[typ], typer.Option(*decl, help=help_text, rich_help_panel=panel,
                                                            show_default=False)]
        out.append(ModelOption(name=name, flag=flag, loc=loc, kind=kind, annotation=annotation, help=help_text,
                               parse=cli.parse))
    return out


def with_options(func: Callable[..., Any], options: list[ModelOption]) -> Callable[..., Any]:
    """A typer command function: ``func``'s own parameters plus one keyword parameter per option (default
    None: not given). ``func`` receives them all as keyword arguments."""
    sig = inspect.signature(func, eval_str=True)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own}
    clash = [o.name for o in options if o.name in taken]
    if clash:
        raise ValueError(f"options {clash} of the model clash with parameters of {func.__name__}")
    extra = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation)
             for o in options]

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
        if v is None or (o.kind == "list" and not v):
            continue
        node = values
        for part in o.loc[:-1]:
            node = node.setdefault(part, {})
        if o.kind == "parse":
            try:
                parsed = o.parse(v)
            except ValueError as e:
                raise typer.BadParameter(str(e), param_hint=o.flag) from None
            node.update(parsed)
            flags.update({(*o.loc[:-1], k): o.flag for k in parsed})
        else:
            node[o.loc[-1]] = _parse(o, v)
        flags[o.loc] = o.flag
    return values, flags


def option_flags(options: Iterable[ModelOption]) -> dict[Loc, str]:
    """``{loc: flag}`` of every option (given or not)."""
    return {o.loc: o.flag for o in options}


def parameter_name(loc: Iterable[Any], flags: Mapping[Loc, str], config_file: Any = None,
                   known: Mapping[Loc, str] | None = None) -> str:
    """What to call the parameter at ``loc`` in an error: the flag the user typed when one set it (or set
    a field above it, as ``--size`` sets ``decode.size``); else the field's path in the ``--config`` file
    when there is one; else the command's flag for it (``known``), if any; else the field's path."""
    loc = tuple(str(p) for p in loc)
    for table in (flags, None if config_file else known):
        for n in range(len(loc), 0, -1):
            if table and loc[:n] in table:
                return table[loc[:n]]
    field = ".".join(loc) or "(the whole configuration)"
    return f"{field} (in --config {config_file})" if config_file else field


def report_validation(e: ValidationError, flags: Mapping[Loc, str], config_file: Any = None,
                      known: Mapping[Loc, str] | None = None) -> None:
    """Print one line per error, naming the flag (or field) and saying the value once; exit 2."""
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "missing":
            msg = "required" + (f" (give it on the command line or in --config {config_file})" if config_file else "")
        elif err["type"] not in ("value_error", "assertion_error") and "input" in err:
            msg += f" (got {err['input']!r})"  # pydantic's own messages do not quote the value; ours do
        typer.secho(f"error: {parameter_name(err['loc'], flags, config_file, known)}: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def build_config(model: type[BaseModel], options: list[ModelOption], fields: Mapping[str, Any],
                 config_file: Path | None, extra_values: Mapping | None = None,
                 extra_flags: Mapping[Loc, str] | None = None) -> tuple[Any, dict[Loc, str], dict[Loc, str]]:
    """``model`` from the ``--config`` file (optional) overridden by the options given in ``fields`` (the
    command's keyword arguments; None: not given, the file's value or the model's default holds) and by
    ``extra_values`` (a command's own arguments, named by ``extra_flags``). Returns the model, ``{loc: flag}``
    of what was given and of every option, for error messages. A wrong value exits 2 naming its flag."""
    values, flags = given_values(options, fields)
    values = deep_merge(values, dict(extra_values or {}))
    flags.update(extra_flags or {})
    known = {**option_flags(options), **(extra_flags or {})}
    try:
        data = load_config_file(config_file)
    except ConfigFileError as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    try:
        return model.model_validate(deep_merge(data, values)), flags, known
    except ValidationError as e:
        report_validation(e, flags, config_file, known)
        raise  # unreachable: report_validation exits
