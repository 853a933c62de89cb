"""Typed `:key=value` arguments of experiment config files (`--config=configs/pretrain.py:size=base,runlocal`).

Each config file declares what its argument string accepts (`ARGS = {"size": Arg(str, "base", SIZES), ...}`)
and parses it with `parse(arg, ARGS, __file__)`: an unknown key, a value of the wrong type or outside its
choices is a `ValueError` that lists what the file accepts, so `sise=large` cannot silently train the
default size. A bare key (`runlocal`) sets a bool argument to True.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Dict, Mapping, Optional, Sequence

_TRUE, _FALSE = ("true", "1", "yes", ""), ("false", "0", "no")


@dataclasses.dataclass(frozen=True)
class Arg:
    """One accepted argument: its type (str, int, float or bool), default and allowed values."""

    type: type = str
    default: Any = None
    choices: Optional[Sequence[Any]] = None
    help: str = ""

    def describe(self, name: str) -> str:
        if self.type is bool:
            return f"{name} (flag)"
        kind = f"one of {', '.join(map(str, self.choices))}" if self.choices else self.type.__name__
        default = "required" if self.default is None else f"default {self.default!r}"
        return f"{name}={kind} ({default})"


def describe(spec: Mapping[str, Arg]) -> str:
    return "; ".join(arg.describe(name) for name, arg in spec.items()) or "no arguments"


def _convert(name: str, raw: str, arg: Arg, where: str) -> Any:
    value = raw.strip()
    if arg.type is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ValueError(f"{where}: argument {name}={raw!r} is not a boolean (use '{name}' or '{name}=false')")
    if value == "":
        raise ValueError(f"{where}: argument {name!r} needs a value ({arg.describe(name)})")
    try:
        converted = arg.type(value)
    except ValueError:
        raise ValueError(f"{where}: argument {name}={raw!r} is not a {arg.type.__name__}") from None
    if arg.choices is not None and converted not in arg.choices:
        raise ValueError(f"{where}: argument {name}={raw!r} is not one of {', '.join(map(str, arg.choices))}")
    return converted


def parse(arg: Optional[str], spec: Mapping[str, Arg], where: str) -> Dict[str, Any]:
    """{name: value} for every argument of `spec` (defaults filled in) from 'k=v,flag,...'.

    `where` names the config file in errors. Raises ValueError for unknown, repeated, mistyped or
    missing required arguments, listing what the file accepts."""
    where = os.path.relpath(where) if os.path.isabs(where) else where
    given: Dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown argument {key!r}{hint}; it accepts: {describe(spec)}")
        if key in given:
            raise ValueError(f"{where}: argument {key!r} given twice")
        if not sep and spec[key].type is not bool:
            raise ValueError(f"{where}: argument {key!r} needs a value ({spec[key].describe(key)})")
        given[key] = value
    out = {}
    for name, a in spec.items():
        if name in given:
            out[name] = _convert(name, given[name], a, where)
        elif a.default is None and a.type is not bool:
            kind = ", ".join(map(str, a.choices)) if a.choices else a.type.__name__
            raise ValueError(f"{where}: needs {name}=<{kind}> (argument {name!r} is required); it accepts: "
                             f"{describe(spec)}")
        else:
            out[name] = bool(a.default) if a.type is bool else a.default
    return out
