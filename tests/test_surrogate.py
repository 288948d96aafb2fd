"""The approximated derivatives h1–h4 (and extras): formulas, unit mass, primitives."""

from __future__ import annotations

import math

import pytest
import torch

from stbp.functional import SURROGATES, get_surrogate


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("width", [0.25, 1.0, 3.0])
def test_integrates_to_one_and_primitive_is_integral(name, width):
    s = get_surrogate(name, width)
    x = torch.linspace(-50 * width, 50 * width, 2_000_001, dtype=torch.float64)
    h = s.derivative(x)
    assert (h >= 0).all()
    # the primitive is the integral of h ...
    numeric = torch.trapezoid(h, x).item()
    assert numeric == pytest.approx((s.primitive(x[-1]) - s.primitive(x[0])).item(), abs=1e-4)
    # ... and it runs from 0 to 1: h has unit mass
    far = torch.tensor([-1e9, 1e9], dtype=torch.float64)
    assert s.primitive(far).tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    # primitive' = derivative (central differences away from kinks)
    xs = torch.tensor([-0.37, -0.11, 0.05, 0.21, 0.43], dtype=torch.float64) * width
    d = 1e-6
    num = (s.primitive(xs + d) - s.primitive(xs - d)) / (2 * d)
    assert torch.allclose(num, s.derivative(xs), atol=1e-5)


def test_paper_formulas_at_points():
    a = 1.0
    zero = torch.tensor(0.0, dtype=torch.float64)
    assert get_surrogate("rectangular", a)(zero) == 1 / a
    assert get_surrogate("rectangular", a)(torch.tensor(0.6)) == 0
    assert get_surrogate("polynomial", a)(zero) == pytest.approx(math.sqrt(a) / 2)
    assert get_surrogate("polynomial", a)(torch.tensor(2.0 / math.sqrt(a) + 1e-3)) == 0
    assert get_surrogate("sigmoid", a)(zero) == pytest.approx(1 / (4 * a))
    assert get_surrogate("gaussian", a)(zero) == pytest.approx(1 / math.sqrt(2 * math.pi * a))
    a = 0.5
    v = torch.tensor(0.3, dtype=torch.float64)
    e = math.exp(-0.3 / a)
    assert get_surrogate("h3", a)(v) == pytest.approx(e / (a * (1 + e) ** 2))
    assert get_surrogate("h4", a)(v) == pytest.approx(
        math.exp(-0.09 / (2 * a)) / math.sqrt(2 * math.pi * a))
