"""Command-line flags derived from the job contract's option models.

``--learning-rate`` of ``spottune adapt`` is ``learning_rate`` of
:class:`spottune.contract.AdaptationOptions`, with the same default, bounds and description, so
the command line and the API cannot drift apart. Values are validated by the contract itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError

from spottune.ml.config import bounds_of, format_validation_error

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_type(name: str, model: type[BaseModel]) -> Any:
    """The type typer parses; the contract validates the value afterwards."""
    field = model.model_fields[name]
    annotation = field.annotation
    if get_origin(annotation) is tuple:
        return str  # "2" or "1.5,1.5": one number for both sides, as the contract accepts
    if get_origin(annotation) is Literal and not all(isinstance(a, str)
                                                     for a in get_args(annotation)):
        return int  # typer offers choices of strings only; the contract checks the value
    return annotation


def _help(name: str, model: type[BaseModel]) -> str:
    field = model.model_fields[name]
    text = field.description or ""
    allowed = bounds_of(model, (name,))
    if allowed is None and get_origin(field.annotation) is Literal:
        allowed = ", ".join(str(a) for a in get_args(field.annotation))
    return f"{text} [{allowed}]" if allowed else text


def contract_parameters(model: type[BaseModel],
                        skip: Collection[str] = ()) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of `model`, named and defaulted as there."""
    params = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        cli_type = _cli_type(name, model)
        default = field.get_default(call_default_factory=True)
        if cli_type is str and isinstance(default, tuple):
            default = ",".join(f"{v:g}" for v in default)
        option = typer.Option(flag(name), help=_help(name, model))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[cli_type, option]))
    return params


def with_options(model: type[BaseModel], skip: Collection[str] = ()) -> Callable[[F], F]:
    """Give a command (which takes ``**options``) a flag for each option of `model`."""

    def decorate(command: F) -> F:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[*kept, *contract_parameters(model, skip)])
        return command

    return decorate


def parse_options(model: type[M], values: dict[str, Any]) -> M:
    """The contract's model from flag values; ValueError naming the flag and its range."""
    fields = {}
    for name, value in values.items():
        if isinstance(value, str) and model.model_fields[name].annotation is not str:
            fields[name] = _split(value)
        else:
            fields[name] = value
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        message = format_validation_error(model, exc)
        for name in model.model_fields:
            message = message.replace(f"{name}:", f"{flag(name)}:")
        raise ValueError(message) from None


def _split(text: str) -> Any:
    """ "2" -> 2.0; "1.5,1" -> (1.5, 1.0); anything else is left for the contract to refuse."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        return text
    return values[0] if len(values) == 1 else values

