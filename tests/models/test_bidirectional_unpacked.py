"""The unpacked bidirectional recurrence gives what packing the spans would give."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.layers import ModelConfig
from models.recurrent import TorchRNNEncoder, _valid, align_left, span_mask, take_steps


def packed_reference(enc: TorchRNNEncoder, x, static, step_mask):
    B, T, _ = x.shape
    first, length = span_mask(step_mask)
    xa = align_left(x, first)
    h0 = torch.tanh(enc.init_state(static)).view(B, enc.layers * 2, enc.hidden)
    h0 = h0.transpose(0, 1).contiguous()
    state = (h0, torch.zeros_like(h0)) if isinstance(enc.rnn, nn.LSTM) else h0
    packed = pack_padded_sequence(xa, length.clamp(min=1), batch_first=True,
                                  enforce_sorted=False)
    out, _ = enc.rnn(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    return align_left(out * _valid(length, T), first, inverse=True)


@pytest.mark.parametrize("rnn_cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("layers", [1, 2])
def test_unpacked_bidirectional_matches_packed(rnn_cls, layers):
    torch.manual_seed(0)
    cfg = ModelConfig("lstm", 9, 4, hidden=8, layers=layers, bidirectional=True, dropout=0.2)
    enc = TorchRNNEncoder(rnn_cls, cfg).eval()
    B, T = 7, 12
    x, static = torch.randn(B, T, 9), torch.randn(B, 4)
    first = torch.tensor([0, 0, 3, 5, 1, 0, 11])
    last = torch.tensor([11, 4, 9, 5, 10, 0, 11])
    t = torch.arange(T)
    step_mask = (t >= first[:, None]) & (t <= last[:, None])
    step_mask[5] = False  # an empty stay
    got = enc(x, static, step_mask)
    want = packed_reference(enc, x, static, step_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_steps_are_taken_as_gather_takes_them_values_and_gradients():
    """The rolls and span reversals copy whole steps (`take_steps`, index_select): exactly
    torch.gather's values and gradients, a clamped index repeated within a row included."""
    torch.manual_seed(1)
    B, T, D = 5, 9, 6
    x = torch.randn(B, T, D, requires_grad=True)
    length = torch.tensor([9, 4, 1, 7, 2])
    idx = (length[:, None] - 1 - torch.arange(T)[None, :]).clamp(min=0)  # repeats index 0
    idx[0] = torch.roll(torch.arange(T), 3)  # a roll
    weights = torch.randn(B, T, D)
    want = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, D))
    got = take_steps(x, idx)
    assert torch.equal(got, want)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), x)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), x)
    assert torch.equal(got_grad, want_grad)
