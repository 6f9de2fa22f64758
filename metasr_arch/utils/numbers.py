"""The one grammar for numbers that people type: command-line flags (``--scale``, ``--size``) and
option values given as text.

A number is written in plain decimal, optionally with an exponent: ``2``, ``2.5``, ``.5``, ``+3``,
``1e-4``, ``2.5E2``. Nothing else: no digit separators (Python's ``float('2_5')`` is 25 and YAML 1.1
reads ``2_5`` as 25), no decimal commas (``1,5`` is not 1.5 and not a pair), no ``nan``/``inf``, no hex.
Pairs are two such numbers joined by ``x`` (``2x3.5`` is r_v = 2 by r_h = 3.5; ``721x1440`` is
height x width). Errors name the argument and show the accepted forms.
"""
import math
import re
from numbers import Integral, Real
from typing import Optional, Tuple

NUMBER = r'[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?'
INTEGER = r'[+]?\d+'
_NUMBER_RE = re.compile(rf'\s*({NUMBER})\s*', re.ASCII)  # ASCII: float() also takes other scripts' digits
_INTEGER_RE = re.compile(rf'\s*({INTEGER})\s*', re.ASCII)
NUMBER_FORMS = 'a decimal number such as 2, 2.5, .5 or 1e-4 (no underscores, commas, nan or inf)'


def parse_real(value, name: str, minimum: Optional[float] = None) -> float:
    """A finite float from a number or from text in the module's grammar.

    Args:
        value: an int/float (not bool) or a string such as ``'2.5'`` or ``'1e-4'``.
        name: the argument or option it came from, for the message (``--scale``, ``train.optim_g.lr``).
        minimum: refuse values below it.
    Raises:
        ValueError naming ``name``, the text and the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f'{name}: expected a number, got {value!r}')
    if isinstance(value, Real):
        number = float(value)
    elif isinstance(value, str):
        match = _NUMBER_RE.fullmatch(value)
        if not match:
            raise ValueError(f'{name} {value!r} is not a number: write {NUMBER_FORMS}')
        number = float(match.group(1))
    else:
        raise ValueError(f'{name}: expected a number, got {type(value).__name__} {value!r}')
    if not math.isfinite(number):
        raise ValueError(f'{name} {value!r} is not a finite number')
    if minimum is not None and number < minimum:
        raise ValueError(f'{name} {value!r} must be >= {minimum:g}')
    return number


def parse_int(value, name: str, minimum: Optional[int] = None) -> int:
    """An int from an integer or from digits (``'721'``); floats such as 2.0 and text such as '2.0' are refused."""
    if isinstance(value, bool):
        raise ValueError(f'{name}: expected an integer, got {value!r}')
    if isinstance(value, Integral):
        number = int(value)
    elif isinstance(value, str) and _INTEGER_RE.fullmatch(value):
        number = int(_INTEGER_RE.fullmatch(value).group(1))
    else:
        raise ValueError(f'{name} {value!r} is not an integer: write digits only, such as 721 '
                         '(no underscores, commas or decimal point)')
    if minimum is not None and number < minimum:
        raise ValueError(f'{name} {value!r} must be >= {minimum}')
    return number


def split_pair(text: str, name: str, forms: str) -> Tuple[str, ...]:
    """``'2x3.5'`` -> ('2', '3.5'); ``'2.5'`` -> ('2.5',). Only ``x``/``X`` separates.

    Args:
        forms: the accepted forms for the message (e.g. ``'a number (2.5) or r_v x r_h (2x3.5)'``).
    Raises:
        ValueError naming ``name`` for empty text, a comma, or more than two parts.
    """
    if not isinstance(text, str):
        raise ValueError(f'{name}: expected text, got {type(text).__name__} {text!r}')
    parts = tuple(re.split(r'[xX]', text.strip()))
    if ',' in text or not text.strip() or len(parts) > 2 or any(not p.strip() for p in parts):
        raise ValueError(f'{name} {text!r} is malformed: use {forms}; numbers are {NUMBER_FORMS}')
    return parts
