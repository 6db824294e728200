"""The model: upstream compatibility, buffer contract, and streaming == clip exactness."""
import pytest
import torch

from helpers import random_clip, seeded_model
from online_tsm.models import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM

# Shapes of the upstream online demo's state dict, written out from the MobileNetV2
# architecture table (t, c, n, s) by hand: block b is features[b + 1].
UPSTREAM_SHAPES = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.1.conv.0.weight": (32, 1, 3, 3),       # block 0: t=1, depthwise first
    "features.1.conv.3.weight": (16, 32, 1, 1),
    "features.2.conv.0.weight": (96, 16, 1, 1),
    "features.3.conv.0.weight": (144, 24, 1, 1),
    "features.3.conv.3.weight": (144, 1, 3, 3),
    "features.3.conv.6.weight": (24, 144, 1, 1),
    "features.7.conv.0.weight": (192, 32, 1, 1),
    "features.14.conv.0.weight": (576, 96, 1, 1),
    "features.17.conv.6.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.running_var": (1280,),
    "classifier.weight": (27, 1280),
    "classifier.bias": (27,),
}


def test_state_dict_matches_upstream_layout():
    sd = MobileNetV2TSM().state_dict()
    for key, shape in UPSTREAM_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    # 52 conv/linear + 52 BN layers x 5 entries: stem, 17 blocks, head, classifier.
    n_conv = 1 + 2 + 16 * 3 + 1
    assert len(sd) == n_conv + n_conv * 5 + 2
    assert [k for k in sd if ".net." in k] == []


def test_buffer_shapes_224():
    m = MobileNetV2TSM()
    assert m.buffer_shapes() == [(1, 3, 56, 56), (1, 4, 28, 28), (1, 4, 28, 28), (1, 8, 14, 14), (1, 8, 14, 14),
                                 (1, 8, 14, 14), (1, 12, 14, 14), (1, 12, 14, 14), (1, 20, 7, 7), (1, 20, 7, 7)]
    bufs = m.init_buffers(batch=2, dtype=torch.float64)
    assert [tuple(b.shape) for b in bufs] == m.buffer_shapes(batch=2)
    assert all(b.dtype == torch.float64 and not b.any() for b in bufs)


def test_per_frame_outputs(model_small):
    frame = torch.randn(2, 3, 96, 96)
    logits, *bufs = model_small(frame, *model_small.init_buffers(batch=2))
    assert logits.shape == (2, 10)
    assert [tuple(b.shape) for b in bufs] == model_small.buffer_shapes(batch=2)


def _stream(model, clip):
    buffers = model.init_buffers(batch=clip.shape[0])
    outs = []
    for t in range(clip.shape[1]):
        logits, *buffers = model(clip[:, t], *buffers)
        outs.append(logits)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("config", [dict(seed=0), dict(seed=2, width_mult=0.5, input_size=128, n_class=9)])
def test_streaming_equals_causal_clip(batch, config):
    model = seeded_model(**config)
    clip = random_clip(batch, 8, model.input_size, seed=batch)
    with torch.inference_mode():
        clip_logits = model.forward_clip(clip, shift="causal")
        stream_logits = _stream(model, clip)
    assert clip_logits.shape == (batch, 8, model.n_class)
    scale = float(clip_logits.abs().max())
    assert scale > 0.5  # parity on near-zero logits would prove nothing
    # float32 rounding: the clip runs B*T frames per convolution, the stream B, so the kernels (and their summation
    # order) differ with batch size and thread count; 1e-5 of the largest logit is ~100 float32 ulps.
    assert (stream_logits - clip_logits).abs().max() <= 1e-5 * scale


def test_shift_changes_the_result(model_small):
    """The three clip modes must differ: otherwise the shift is not wired in."""
    clip = random_clip(1, 4, 96)
    with torch.inference_mode():
        causal, bidir, none = (model_small.forward_clip(clip, s) for s in ("causal", "bidirectional", "none"))
    assert (causal - none).abs().max() > 1e-3
    assert (bidir - causal).abs().max() > 1e-3


def test_tsn_variant_has_no_buffers_and_equals_none_shift(model_small):
    tsn = MobileNetV2TSM(n_class=10, width_mult=0.5, input_size=96, shift_blocks=()).eval()
    tsn.load_state_dict(model_small.state_dict())
    assert tsn.buffer_shapes() == []
    clip = random_clip(1, 3, 96)
    with torch.inference_mode():
        expected = model_small.forward_clip(clip, "none")
        got = torch.stack([tsn(clip[:, t])[0] for t in range(3)], 1)
    # Batch 3 vs batch 1 convolutions round differently: tolerance relative to the logit scale.
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("kwargs,msg", [
    (dict(input_size=100), "input_size must be a multiple of 32"),
    (dict(shift_blocks=(1,)), "a shifted block must be a stride-1 residual block"),
    (dict(shift_blocks=(40,)), "out of range"),
    (dict(n_class=0), "n_class must be positive"),
])
def test_constructor_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        MobileNetV2TSM(**kwargs)


def test_forward_errors(model_small):
    with pytest.raises(ValueError, match="expected 10 shift buffers, got 0"):
        model_small(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"expected a clip \[B, T, 3, H, W\]"):
        model_small.forward_clip(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match="unknown shift mode"):
        model_small.forward_clip(torch.zeros(1, 2, 3, 96, 96), shift="both")


def test_default_shift_blocks_are_the_residual_blocks():
    m = MobileNetV2TSM()
    residual = [i for i, f in enumerate(m.features[1:-1]) if f.use_res_connect]
    assert tuple(residual) == DEFAULT_SHIFT_BLOCKS
