"""Shift operators against straightforward per-frame loops."""
import pytest
import torch

from online_tsm.shift import shift_bidirectional, shift_causal, shift_clip, shift_online


def _clip(n=2, t=5, c=16, hw=3, seed=0):
    return torch.randn(n * t, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def test_bidirectional_matches_loop():
    n, t, c = 2, 5, 16
    x = _clip(n, t, c)
    out = shift_bidirectional(x, t, fold_div=8).view(n, t, c, 3, 3)
    v = x.view(n, t, c, 3, 3)
    fold = c // 8
    for i in range(t):
        nxt = v[:, i + 1, :fold] if i + 1 < t else torch.zeros_like(v[:, i, :fold])
        prv = v[:, i - 1, fold:2 * fold] if i > 0 else torch.zeros_like(v[:, i, :fold])
        assert torch.equal(out[:, i, :fold], nxt)
        assert torch.equal(out[:, i, fold:2 * fold], prv)
        assert torch.equal(out[:, i, 2 * fold:], v[:, i, 2 * fold:])


def test_causal_matches_loop():
    n, t, c = 2, 5, 16
    x = _clip(n, t, c)
    out = shift_causal(x, t, fold_div=8).view(n, t, c, 3, 3)
    v = x.view(n, t, c, 3, 3)
    assert torch.equal(out[:, 0, :2], torch.zeros_like(out[:, 0, :2]))
    for i in range(1, t):
        assert torch.equal(out[:, i, :2], v[:, i - 1, :2])
    assert torch.equal(out[:, :, 2:], v[:, :, 2:])


def test_online_streaming_equals_causal():
    n, t, c = 3, 6, 24
    x = _clip(n, t, c)
    expected = shift_causal(x, t, fold_div=8).view(n, t, c, 3, 3)
    v = x.view(n, t, c, 3, 3)
    buffer = torch.zeros(n, c // 8, 3, 3)
    for i in range(t):
        shifted, buffer = shift_online(v[:, i], buffer)
        assert torch.equal(shifted, expected[:, i])
        assert torch.equal(buffer, v[:, i, : c // 8])


def test_none_is_identity():
    x = _clip()
    assert shift_clip(x, 5, "none") is x


@pytest.mark.parametrize("call,msg", [
    (lambda x: shift_causal(x, 3), "not a multiple of n_frames=3"),
    (lambda x: shift_causal(x[0], 5), "expected a clip tensor"),
    (lambda x: shift_clip(x, 5, "sideways"), "unknown shift mode 'sideways'"),
    (lambda x: shift_bidirectional(x, 5, fold_div=0), "fold_div must be a positive integer"),
])
def test_shift_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(_clip())
