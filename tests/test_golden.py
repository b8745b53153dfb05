"""Behaviour kept: the fixed-seed numbers of `tests/golden/numbers.json` (written by
`python -m tests.golden.make_golden`) computed again, to float tolerance: relative 1e-4 (another
CPU's kernels round differently), 0.01 kB for JPEG rewards (a pixel that rounds the other way
changes a file by a few bytes), 0.002 for the bench's evaluation rewards (means of JPEG sizes
after training runs; the table prints 4 decimals) and two of its 128 attributes for their
faithfulness (a pixel rounded the other way can flip what the captioner reads), and for an
update's summed parameter change half its largest entry (Adam's first step moves a parameter by
up to the learning rate whatever the size of its gradient, so the few whose gradients are within
rounding of zero move by other fractions of a step on another CPU; half a step is still less
than one parameter stepping the other way, which moves the sum by two). A refactor must keep
them; a change meant to alter behaviour rewrites them and says so."""

import json

import numpy as np
import pytest

from tests.golden.make_golden import PATH, compute

GOLDEN = json.loads(PATH.read_text())


@pytest.fixture(scope="module")
def now():
    return compute()


def assert_close(actual, expected, where: str, rtol: float = 1e-4, atol: float = 1e-6):
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}", rtol, atol)
    elif isinstance(expected, list) and expected and isinstance(expected[0], str):
        assert actual == expected, f"{where}: {actual} != {expected}"
    elif where.startswith("bench_quick"):  # evaluations after training: [train reward, held-out reward, faithfulness]
        np.testing.assert_allclose(np.asarray(actual[:2], dtype=np.float64), np.asarray(expected[:2], dtype=np.float64), rtol=0, atol=0.002, err_msg=where)
        assert abs(actual[2] - expected[2]) <= 2 / 128 + 1e-12, f"{where}: faithfulness {actual[2]} != {expected[2]}"
    elif where.endswith(".parameter_change"):  # [norm, sum, max |change|]
        norm, total, peak = (float(v) for v in expected)
        np.testing.assert_allclose([actual[0], actual[2]], [norm, peak], rtol=rtol, atol=atol, err_msg=where)
        assert abs(actual[1] - total) <= 0.5 * peak, f"{where}: summed change {actual[1]} != {total}"
    elif where.endswith(".rewards"):  # JPEG kB
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=0, atol=0.01, err_msg=where)
    else:
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol, err_msg=where)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_the_fixed_seed_numbers_are_unchanged(now, case):
    assert_close(now[case], GOLDEN[case], case)
