"""The one number grammar (utils.numbers) and the CLI parsers built on it (utils.naming)."""
import pytest

from metasr_arch.utils.naming import parse_scale_text, parse_size_text
from metasr_arch.utils.numbers import parse_int, parse_real


@pytest.mark.parametrize('text, expected', [('2', 2.0), ('2.5', 2.5), ('.5', 0.5), ('+3', 3.0), ('1e-4', 1e-4),
                                            ('2.5E2', 250.0), (' 7 ', 7.0), ('3.', 3.0)])
def test_parse_real_accepts_plain_decimals(text, expected):
    assert parse_real(text, 'x') == expected


@pytest.mark.parametrize('text', ['2_5', '1,5', 'nan', 'inf', '-inf', '0x10', '', '1e', '٣', '1e999', 'two'])
def test_parse_real_refuses_everything_else_by_name(text):
    with pytest.raises(ValueError, match=r"^train\.lr "):
        parse_real(text, 'train.lr')


def test_parse_real_numbers_and_minimum():
    assert parse_real(3, 'x') == 3.0
    with pytest.raises(ValueError, match='expected a number'):
        parse_real(True, 'x')
    with pytest.raises(ValueError, match='not a finite number'):
        parse_real(float('nan'), 'x')
    with pytest.raises(ValueError, match='must be >= 1'):
        parse_real('0.5', 'x', minimum=1)


def test_parse_int():
    assert parse_int('721', 'n') == 721 and parse_int(5, 'n') == 5
    for bad in ('7_21', '2.0', 2.0, '1e3', '-', True):
        with pytest.raises(ValueError, match='^n[ :]'):
            parse_int(bad, 'n')
    with pytest.raises(ValueError, match='must be >= 1'):
        parse_int('0', 'n', minimum=1)


@pytest.mark.parametrize('text, expected', [('2.5', (2.5, 2.5)), ('2x3.5', (2.0, 3.5)), ('4X2', (4.0, 2.0)),
                                            ('1e0x1.5', (1.0, 1.5))])
def test_scale_text(text, expected):
    assert parse_scale_text(text) == expected


@pytest.mark.parametrize('text', ['1,5', '2_5', '2,3', '2x', 'x2', '2x3x4', 'nan', '2x3_0'])
def test_scale_text_refuses_separators_and_underscores(text):
    # '1,5' used to run at 1 x 5 and '2_5' at x25, both with exit status 0
    with pytest.raises(ValueError, match=r"--scale .* is malformed: use a number \(2\.5\) or r_v x r_h"):
        parse_scale_text(text)


@pytest.mark.parametrize('text', ['721,1440', '7_21x1440', '721.0x1440', '0x5', '721', 'x'])
def test_size_text_refuses(text):
    with pytest.raises(ValueError, match='--size .* HEIGHTxWIDTH'):
        parse_size_text(text)
    assert parse_size_text('721x1440') == (721, 1440)
