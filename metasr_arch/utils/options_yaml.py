"""Reading an options file with the project's one number grammar (``utils.numbers``).

BasicSR reads options with PyYAML, which follows YAML 1.1: ``lr: 2_5`` is the int 25, ``010`` is 8,
``1:30`` is 90, ``0x1f`` is 31, ``.inf`` is infinite, while ``1e-4`` and ``1,5`` stay text. Here
every plain (unquoted) scalar that YAML would read as a number must be written in the grammar
(``2``, ``2.5``, ``.5``, ``-1``, ``1e-4``), a plain scalar that looks like a number with digit
separators (``1,5``, ``1_000``) is refused, and a number in the grammar that YAML 1.1 would leave as
text (``1e-4``, ``1E5``, ``-.5``) is read as a float. Quoted scalars are text and never checked.
"""
import re
from typing import Any, List, Mapping, Tuple

import yaml

from metasr_arch.utils.numbers import NUMBER, NUMBER_FORMS
from metasr_arch.utils.options import OptionError

_INT_TAG, _FLOAT_TAG = 'tag:yaml.org,2002:int', 'tag:yaml.org,2002:float'
_GRAMMAR = re.compile(NUMBER, re.ASCII)
# digits grouped by commas or underscores, optionally with a fraction or exponent: 1,5  1_000  2,5e-3
_SEPARATED = re.compile(r'[+-]?\d+(?:[_,]\d*)+(?:\.\d*)?(?:[eE][+-]?\d+)?|[+-]?\d*\.\d+(?:[_,]\d*)+', re.ASCII)


class StrictNumberLoader(yaml.SafeLoader):
    """SafeLoader that also reads grammar numbers YAML 1.1 leaves as text (``1e-4``) as floats."""


StrictNumberLoader.add_implicit_resolver(_FLOAT_TAG, re.compile(rf'^(?:{NUMBER})$', re.ASCII),
                                         list('-+0123456789.'))


def _where(path: Tuple) -> str:
    out = ''
    for part in path:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else str(part))
    return out or '(top level)'


def _check_node(node: yaml.Node, path: Tuple, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _check_node(value, path + (key.value if isinstance(key, yaml.ScalarNode) else '?', ), source)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _check_node(value, path + (i, ), source)
    elif isinstance(node, yaml.ScalarNode):
        text = node.value
        if node.tag in (_INT_TAG, _FLOAT_TAG):
            match = _GRAMMAR.fullmatch(text.strip())
            if match is None or _octal_like(text):
                raise OptionError(f'{_where(path)}: {text!r} in {source} is not a number as written: write '
                                  f'{NUMBER_FORMS}; quote it if it is text')
        elif node.style is None and _SEPARATED.fullmatch(text.strip()):
            raise OptionError(f'{_where(path)}: {text!r} in {source} looks like a number with separators: write '
                              f'{NUMBER_FORMS} (for a pair use a list [a, b]); quote it if it is text')


def _octal_like(text: str) -> bool:
    """``010`` (YAML 1.1: 8) and ``-07``: a leading zero before more digits reads as octal."""
    return re.fullmatch(r'[+-]?0\d+', text.strip()) is not None


def load_options(path: str) -> Any:
    """The options file at ``path`` read strictly (see the module docstring).

    Raises:
        OptionError naming the file (missing, unreadable, not YAML) or the option and its text.
    """
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as err:
        raise OptionError(f'-opt {path}: {err.strerror or err}') from None
    except UnicodeDecodeError as err:
        raise OptionError(f'-opt {path}: not UTF-8 text ({err.reason} at byte {err.start})') from None
    loader = StrictNumberLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise OptionError(f'-opt {path}: the file is empty')
        _check_node(node, (), path)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else ''
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise OptionError(f'-opt {path}: not valid YAML{where}: {problem}') from None
    finally:
        loader.dispose()


def adopt_numbers(opt: Any, strict: Any) -> List[str]:
    """Copy into ``opt`` (BasicSR's reading) the numbers of ``strict`` (``load_options``) that BasicSR read
    as text (``lr: 1e-4``); returns the dotted places changed."""
    changed: List[str] = []

    def walk(a, b, path):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in list(a):
                if key in b:
                    if isinstance(a[key], str) and isinstance(b[key], float) and not isinstance(b[key], bool):
                        a[key] = b[key]
                        changed.append(_where(path + (key, )))
                    else:
                        walk(a[key], b[key], path + (key, ))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i in range(len(a)):
                if isinstance(a[i], str) and isinstance(b[i], float):
                    a[i] = b[i]
                    changed.append(_where(path + (i, )))
                else:
                    walk(a[i], b[i], path + (i, ))

    walk(opt, strict, ())
    return changed
