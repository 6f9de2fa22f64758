"""Scale/size parsing and the project's one naming rule for scales (``X2.50``, ``X2.00_X3.50``, ``721x1440``).

Used by the inference CLI, the data tools, the paired dataset and the model's validation records.
"""
import re
from typing import List, Tuple

from metasr_arch.ops.geometry import parse_scale
from metasr_arch.utils.numbers import NUMBER_FORMS, parse_int, parse_real, split_pair

Request = Tuple[str, Tuple[float, float]]  # ('scale', (r_v, r_h)) or ('size', (H, W))
# every tag request_tag can write: X2.50, X2.00_X3.50, 721x1440
TAG_RE = re.compile(r'X\d+\.\d*(?:_X\d+\.\d*)?|\d+x\d+')


def parse_scale_text(text: str, name: str = '--scale') -> Tuple[float, float]:
    """``'2.5'`` -> (2.5, 2.5); ``'2x3.5'`` -> (2.0, 3.5) (vertical x horizontal), each >= 1.

    Numbers follow ``utils.numbers`` (no ``2_5``, no ``1,5``).

    Raises:
        ValueError naming ``name`` for malformed text or a scale below 1.
    """
    forms = 'a number (2.5) or r_v x r_h (2x3.5)'
    parts = split_pair(text, name, forms)
    values = []
    for part in parts:
        try:
            values.append(parse_real(part, name))
        except ValueError:
            raise ValueError(f'{name} {text!r} is malformed: use {forms}; numbers are {NUMBER_FORMS}') from None
    try:
        return parse_scale(values[0] if len(values) == 1 else tuple(values))
    except (TypeError, ValueError) as err:
        raise ValueError(f'{name} {text!r}: {err}') from None


def parse_size_text(text: str, name: str = '--size') -> Tuple[int, int]:
    """``'721x1440'`` -> (721, 1440) (height x width), both positive integers."""
    message = f'{name} {text!r} is malformed: use HEIGHTxWIDTH with positive integers, e.g. 721x1440'
    try:
        parts = split_pair(text, name, 'HEIGHTxWIDTH')
        if len(parts) != 2:
            raise ValueError(message)
        return parse_int(parts[0], name, 1), parse_int(parts[1], name, 1)
    except ValueError:
        raise ValueError(message) from None


def _fmt(r: float) -> str:
    # Two decimals is the benchmark convention; scales that need more keep them, so names never collide.
    text = f'{r:.2f}'
    return text if abs(float(text) - r) < 1e-9 else f'{r:.6f}'.rstrip('0')


def scale_tag(r_v: float, r_h: float) -> str:
    """Folder/file tag of a scale: ``X2.50`` when symmetric, ``X2.00_X3.50`` for (r_v, r_h)."""
    return f'X{_fmt(r_v)}' if abs(r_v - r_h) < 1e-12 else f'X{_fmt(r_v)}_X{_fmt(r_h)}'


def request_tag(request: Request) -> str:
    """Tag of a request: ``scale_tag`` for scales, ``HxW`` for exact sizes."""
    kind, (a, b) = request
    return scale_tag(a, b) if kind == 'scale' else f'{int(a)}x{int(b)}'


def tagged_bases(stem: str) -> List[str]:
    """Every ``base`` for which ``stem`` is ``<base>_<tag>`` with ``<tag>`` any tag ``request_tag`` writes.

    ``'a_X2.00_X3.00'`` -> ``['a', 'a_X2.00']``; ``'photo'`` -> ``[]``.
    """
    return [stem[:i] for i, c in enumerate(stem) if c == '_' and i > 0 and TAG_RE.fullmatch(stem[i + 1:])]
