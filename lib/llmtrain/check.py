"""One way to check arguments, for every public function and CLI flag of llmtrain.

Each check takes the argument's name and its value, returns the value (converted where that
is exact: a numpy integer becomes an int, a preset name its ``ModelShape``) and otherwise
raises ``ValueError`` with one message shape everywhere:

    <name> must be <rule>, got <value>

e.g. ``pp must be a positive integer, got 0`` or ``impl must be one of ('textbook', …),
got 'texbook'``. Long values are described, not printed (``got a list of 3 Parameter``).
Booleans are not integers here (``True`` is refused where a count is expected), and
``None`` is refused unless a check is wrapped in ``optional``. The CLI turns any of these
messages into one line on stderr and exit status 2 (``llmtrain.cli``).

Tested in tests/test_check.py: every public function × zero, negative, wrong type, wrong
name, each expected to raise this message naming the argument.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, NoReturn, Sequence

__all__ = ["fail", "describe", "integer", "positive_int", "number", "positive_number",
           "one_of", "boolean", "optional", "sequence", "module", "tensor",
           "function"]


def describe(value: Any, limit: int = 60) -> str:
    """``repr(value)`` when short, else its type (and length): what a message says it got."""
    text = repr(value)
    if len(text) <= limit and "\n" not in text:
        return text
    kind = type(value).__name__
    if isinstance(value, (list, tuple)) and value:
        inner = {type(v).__name__ for v in value}
        return f"a {kind} of {len(value)} {'/'.join(sorted(inner))}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {kind} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {kind}"


def fail(name: str, rule: str, value: Any) -> NoReturn:
    """Raise ``ValueError("<name> must be <rule>, got <value>")``."""
    raise ValueError(f"{name} must be {rule}, got {describe(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(name: str, value: Any, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An int (not a bool) in [minimum, maximum]; returned as a Python int.

    Rules as written in messages: "a positive integer" (minimum 1), "an integer >= m",
    "an integer <= M", "an integer in [m, M]", "an integer".
    """
    if minimum == 1 and maximum is None:
        rule = "a positive integer"
    elif minimum is not None and maximum is not None:
        rule = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        rule = f"an integer >= {minimum}"
    elif maximum is not None:
        rule = f"an integer <= {maximum}"
    else:
        rule = "an integer"
    if not _is_int(value):
        fail(name, rule, value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        fail(name, rule, value)
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """An int >= 1 (not a bool): a size, a count, a degree of parallelism."""
    return integer(name, value, 1)


def number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
           *, positive: bool = False, finite: bool = True) -> float:
    """A real number (not a bool), finite unless ``finite=False``, > 0 with ``positive``,
    in [minimum, maximum]. Returned unchanged (an int stays an int)."""
    parts = ["a positive" if positive else "a", "finite number" if finite else "number"]
    rule = " ".join(parts)
    if minimum is not None and maximum is not None:
        rule += f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        rule += f" >= {minimum}"
    elif maximum is not None:
        rule += f" <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(name, rule, value)
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range
        v = math.inf if value > 0 else -math.inf
    if (math.isnan(v) or (finite and math.isinf(v)) or (positive and not v > 0)
            or (minimum is not None and v < minimum) or (maximum is not None and v > maximum)):
        fail(name, rule, value)
    return value


def positive_number(name: str, value: Any) -> float:
    """A finite real number > 0 (a learning rate, a scale, a timeout)."""
    return number(name, value, positive=True)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices``, compared with == (True is not 1 here; a tensor is no choice)."""
    choices = tuple(choices)
    ok = False
    for c in choices:
        try:
            same = (value == c) is True
        except Exception:  # e.g. an array whose == is elementwise
            same = False
        if same and isinstance(value, bool) == isinstance(c, bool):
            ok = True
            break
    if not ok:
        fail(name, f"one of {choices}", value)
    return value


def boolean(name: str, value: Any) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        fail(name, "True or False", value)
    return value


def optional(check: Callable[..., Any], name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """None, or what ``check(name, value, *args, **kwargs)`` accepts."""
    return None if value is None else check(name, value, *args, **kwargs)


def sequence(name: str, value: Any, *, nonempty: bool = False,
             item: Callable[[str, Any], Any] | None = None) -> list:
    """A list or tuple (or another non-string sequence) as a list; ``item(f"{name}[i]", v)``
    checks each element. Refuses None, strings, dicts, sets and iterators (they would be
    consumed by the check)."""
    rule = "a non-empty list or tuple" if nonempty else "a list or tuple"
    if (value is None or isinstance(value, (str, bytes, dict, set, frozenset))
            or not isinstance(value, Sequence) and not _is_array(value)):
        fail(name, rule, value)
    items = list(value)
    if nonempty and not items:
        fail(name, rule, value)
    if item is not None:
        items = [item(f"{name}[{i}]", v) for i, v in enumerate(items)]
    return items


def _is_array(value: Any) -> bool:
    """A torch tensor or numpy array of at least one dimension (iterable by rows)."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and len(getattr(value, "shape")) > 0


def module(name: str, value: Any, cls: type | None = None, what: str | None = None):
    """A ``torch.nn.Module`` (or an instance of ``cls``; ``what`` says it in the message). A
    list of parameters, a common slip for "the model", gets a hint."""
    import torch

    want = torch.nn.Module if cls is None else cls
    if isinstance(value, want):
        return value
    if what is None:
        what = "a torch.nn.Module" if cls is None else f"a {want.__module__}.{want.__qualname__}"
    hint = ""
    if issubclass(want, torch.nn.Module) and isinstance(value, (list, tuple)) and value and all(
            isinstance(v, torch.Tensor) for v in value):
        hint = " (pass the model itself, not its parameters)"
    raise ValueError(f"{name} must be {what}, got {describe(value)}{hint}")


def tensor(name: str, value: Any, *, dim: int | Sequence[int] | None = None,
           floating: bool | None = None, dtype: Any = None):
    """A torch.Tensor; ``dim``: its number of dimensions (one int or several allowed);
    ``floating=True``: a floating-point dtype, ``False``: an integer dtype; ``dtype``: exactly
    that dtype."""
    import torch

    dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
    rule = "a"
    if dims:
        rule += " " + " or ".join(f"{d}-D" for d in dims)
    if dtype is not None:
        rule += f" {str(dtype).removeprefix('torch.')}"
    elif floating is True:
        rule += " floating-point"
    elif floating is False:
        rule += " integer"
    rule += " tensor"
    if not isinstance(value, torch.Tensor):
        fail(name, rule, value)
    bad = (dims and value.dim() not in dims
           or dtype is not None and value.dtype != dtype
           or floating is True and not value.is_floating_point()
           or floating is False and (value.is_floating_point() or value.is_complex()
                                     or value.dtype == torch.bool))
    if bad:
        raise ValueError(f"{name} must be {rule}, got shape {tuple(value.shape)} "
                         f"and dtype {value.dtype}")
    return value


def function(name: str, value: Any) -> Callable:
    """Something callable (a schedule, a function to run)."""
    if not callable(value):
        fail(name, "callable (a function)", value)
    return value
