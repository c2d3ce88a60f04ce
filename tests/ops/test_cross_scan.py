import pytest
import torch

from mambaseg.ops import cross_merge, cross_scan


def test_cross_scan_orders_match_explicit_index_lists():
    b, c, h, w = 2, 3, 4, 5
    x = torch.randn(b, c, h, w)
    xs = cross_scan(x)
    assert xs.shape == (b, 4, c, h * w)
    row = [(i, j) for i in range(h) for j in range(w)]          # row-major
    col = [(i, j) for j in range(w) for i in range(h)]          # column-major
    for k, order in enumerate([row, col, row[::-1], col[::-1]]):
        expect = torch.stack([x[:, :, i, j] for i, j in order], dim=-1)
        torch.testing.assert_close(xs[:, k], expect, rtol=0, atol=0)


def test_cross_merge_is_the_adjoint_of_cross_scan():
    x, y = torch.randn(2, 3, 4, 6, dtype=torch.float64), torch.randn(2, 4, 3, 24, dtype=torch.float64)
    lhs = (cross_scan(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge(y, 4, 6)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_merge_of_scan_sums_four_copies_in_row_major_order():
    x = torch.randn(1, 2, 3, 7)
    torch.testing.assert_close(cross_merge(cross_scan(x), 3, 7), 4 * x.flatten(2))


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"expected \(b, c, h, w\)"):
        cross_scan(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="h\\*w = 12"):
        cross_merge(torch.randn(1, 4, 2, 10), 3, 4)
