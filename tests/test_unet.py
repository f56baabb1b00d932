"""The image U-Net: shapes, conditioning, attention, configs and the size of the course network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scoretut.checkpoint import check_plain
from scoretut.nets.unet import AttentionBlock, UNet

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), groups=4, dropout=0.0)


def tiny(seed: int = 0, **kw) -> UNet:
    torch.manual_seed(seed)
    net = UNet(**{**TINY, **kw})
    # the last layer of every branch starts at zero; give them weights so every input matters
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_untrained_network_outputs_zero():
    torch.manual_seed(0)
    net = UNet(**TINY)
    out = net(torch.randn(2, 3, 8, 8), torch.tensor([3, 700]))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (8, 24)])
def test_output_has_the_input_shape(hw):
    net = tiny(ch_mult=(1, 2, 2), attn_levels=(0, 2))
    x = torch.randn(3, 3, *hw)
    assert net(x, torch.tensor([0, 10, 999])).shape == x.shape
    assert net(x, torch.tensor(5)).shape == x.shape  # one step for the whole batch


def test_time_and_class_change_the_output_and_null_label_is_the_default():
    net = tiny(num_classes=3)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([100, 100])
    base = net(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(base, net(x, torch.tensor([900, 900]), torch.tensor([1, 1])))
    assert not torch.allclose(base, net(x, t, torch.tensor([2, 2])))
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([0, 0])))
    # per-sample conditioning: sample 0 sees only its own t and y
    mixed = net(x, torch.tensor([100, 900]), torch.tensor([1, 3]))
    torch.testing.assert_close(mixed[:1], base[:1])


def test_unconditional_network_refuses_labels_and_bad_sizes():
    net = tiny()
    with pytest.raises(ValueError, match="num_classes=0"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 3, 9, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet(ch=10, groups=4)
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(**{**TINY, "attn_levels": (2,)})


def test_attention_block_is_softmax_attention_over_positions():
    torch.manual_seed(0)
    block = AttentionBlock(8, groups=2)
    nn.init.normal_(block.out.weight, std=0.3)
    x = torch.randn(2, 8, 3, 5)
    q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # (2, 8, 15) each
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 8**0.5, dim=-1)  # (2, 15, 15)
    attended = torch.einsum("bij,bcj->bci", weights, v).reshape(2, 8, 3, 5)
    torch.testing.assert_close(block(x), x + block.out(attended))


def test_channels_last_gives_the_same_result():
    net = tiny(num_classes=2)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 30]), torch.tensor([1, 2])
    ref = net(x, t, y)
    net_cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net_cl(x.to(memory_format=torch.channels_last), t, y), ref, rtol=1e-4, atol=1e-5)


def test_dropout_acts_only_in_training_mode():
    net = tiny(dropout=0.5)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    torch.testing.assert_close(net(x, t), net(x, t))
    net.train()
    assert not torch.allclose(net(x, t), net(x, t))


def test_config_round_trip():
    net = tiny(num_classes=3)
    cfg = net.config()
    check_plain(cfg)
    clone = UNet.from_config(cfg)
    assert isinstance(clone, UNet) and clone.config() == net.config()
    clone.load_state_dict(net.state_dict())
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([7])
    torch.testing.assert_close(clone.eval()(x, t), net(x, t))


def expected_parameters(channels=3, ch=128, mult=(1, 2, 2, 2), n_res=4, attn=(1,), num_classes=0) -> int:
    """The parameter count of the architecture in the module docstring, counted by hand."""
    emb = 4 * ch
    conv = lambda i, o, k=3: k * k * i * o + o  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    res = lambda i, o: gn(i) + conv(i, o) + lin(emb, o) + gn(o) + conv(o, o) + (conv(i, o, 1) if i != o else 0)  # noqa: E731
    att = lambda c: gn(c) + conv(c, 3 * c, 1) + conv(c, c, 1)  # noqa: E731
    total = lin(ch, emb) + lin(emb, emb) + (num_classes + 1) * emb * (num_classes > 0) + conv(channels, ch)
    widths = [ch * m for m in mult]
    skips, now = [ch], ch
    for i, w in enumerate(widths):
        for _ in range(n_res):
            total += res(now, w) + (att(w) if i in attn else 0)
            now = w
            skips.append(w)
        if i < len(widths) - 1:
            total += conv(w, w)
            skips.append(w)
    total += 2 * res(now, now) + att(now)
    for i in reversed(range(len(widths))):
        w = widths[i]
        for _ in range(n_res + 1):
            total += res(now + skips.pop(), w) + (att(w) if i in attn else 0)
            now = w
        if i > 0:
            total += conv(w, w)
    return total + gn(now) + conv(now, channels)


@pytest.mark.parametrize("kw", [dict(), dict(num_classes=3)])
def test_course_network_has_the_hand_counted_size(kw):
    n = sum(p.numel() for p in UNet(**kw).parameters())
    assert n == expected_parameters(**kw)
    assert 55e6 < n < 60e6  # ≈ 58.7 M for ch=128, mult (1,2,2,2), 4 blocks, attention at 32×32


def test_tiny_networks_match_the_hand_count_too():
    kw = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_levels=(0, 1), groups=8, num_classes=2)
    n = sum(p.numel() for p in UNet(**kw).parameters())
    assert n == expected_parameters(ch=32, mult=(1, 2, 2), n_res=2, attn=(0, 1), num_classes=2)
