"""The relaxations' options as pydantic models, built from their records (:mod:`gls_core.relaxations`).

A training config holds each record's options under its key (alpha-CROWN's under ``alpha``), read
leniently as YAML gives them; the REST certify body takes every record's options as optional
strictly typed fields, capped at what a server runs per request. Both are built when first asked
for, so a record registered before then is in both, with its ranges, defaults and descriptions.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
)
from pydantic_core import PydanticCustomError

from .relaxations import Option, Relaxation, records

_MODELS: dict[tuple[str, bool], type[BaseModel]] = {}
TYPE_ERRORS = ("int_type", "float_type", "bool_type")


def option_type(item: Option, *, strict: bool, served: bool) -> Any:
    """The value's type with its range: a number (strict: no coercion), or one of its words."""
    number: Any = (StrictInt if item.kind is int else StrictFloat) if strict else item.kind
    top = item.maximum_for(served)
    integral = item.kind is int  # integral bounds in the schema too
    low = int(item.minimum) if integral or float(item.minimum).is_integer() else item.minimum
    ranged: Any = Annotated[number, Field(ge=low,
                                          le=int(top) if integral and top is not None else top)]
    if not item.words:
        return ranged
    return Annotated[ranged | Literal[item.words], WrapValidator(partial(_one_error, item, served))]


def _one_error(item: Option, served: bool, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A number or a word: one error at the field, in the record's words (not one per member of the union)."""
    try:
        return handler(value)
    except ValidationError as failed:
        from .errors import InvalidInput

        kinds = [error["type"] for error in failed.errors() if error["type"] in TYPE_ERRORS]
        try:
            item.check(value, item.name, served)
        except InvalidInput as error:  # a value of the wrong type keeps its type error (strict: no coercion)
            raise PydanticCustomError(kinds[0] if kinds else "relaxation_option", error.reason) from None
        raise


def section_model(record: Relaxation, *, strict: bool = False) -> type[BaseModel]:
    """A config section of ``record``'s options: unknown keys refused, every option at its default."""
    key = (record.name, strict)
    if key not in _MODELS:
        fields: dict[str, Any] = {item.name: (option_type(item, strict=strict, served=False),
                                              Field(item.default, description=item.help)) for item in record.options}
        _MODELS[key] = create_model(f"{record.options_type.__name__ if record.options_type else record.name}Section",
                                    __config__=ConfigDict(extra="forbid", validate_assignment=True), **fields)
    return _MODELS[key]


def config_sections() -> dict[str, Relaxation]:
    """Config key -> record, for every relaxation that takes options."""
    return {record.config_key: record for record in records() if record.options}


def request_fields() -> dict[str, Any]:
    """The options of every relaxation as optional REST fields (the first record to name an option types it);
    which options apply to which method is checked by the records."""
    fields: dict[str, Any] = {}
    for record in records():
        for item in record.options:
            default = record.defaults(evaluating=True)[item.name]
            fields.setdefault(item.name, (option_type(item, strict=True, served=True) | None, Field(
                None, description=f"{record.name}: {item.help} (default {default!r})")))
    return fields
