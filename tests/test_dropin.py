"""smoothing_ext as a one-line replacement of PyTorch's cross entropy and BCE-with-logits: the
classes are PyTorch's (subclasses), the signatures, the deprecated arguments, repr, state_dict and
pickling behave as PyTorch's, and the corner cases PyTorch accepts (zero classes, the meta device)
give PyTorch's results. PyTorch's own module / function is the oracle throughout."""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext


def _positional(fn) -> list[str]:
    return [
        p.name for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def test_classes_are_torchs():
    assert isinstance(smoothing_ext.CrossEntropyLoss(), torch.nn.CrossEntropyLoss)
    assert isinstance(smoothing_ext.LabelSmoothingCrossEntropy(), torch.nn.CrossEntropyLoss)
    assert isinstance(smoothing_ext.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss)


def test_positional_signatures_start_with_torchs():
    pairs = [
        (smoothing_ext.cross_entropy, F.cross_entropy),
        (smoothing_ext.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
        (smoothing_ext.CrossEntropyLoss, torch.nn.CrossEntropyLoss),
        (smoothing_ext.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss),
    ]
    for ours, theirs in pairs:
        t = _positional(theirs)
        assert _positional(ours)[: len(t)] == t, ours
        for name in t:  # same defaults
            assert inspect.signature(ours).parameters[name].default == inspect.signature(theirs).parameters[name].default


def test_positional_calls_give_torchs_results():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g)
    t = torch.randint(0, 5, (6,), generator=g)
    w = torch.rand(5, generator=g) + 0.5
    args = (w, None, 2, None, "sum", 0.1)
    torch.testing.assert_close(smoothing_ext.cross_entropy(x, t, *args), F.cross_entropy(x, t, *args))
    torch.testing.assert_close(smoothing_ext.CrossEntropyLoss(*args)(x, t), torch.nn.CrossEntropyLoss(*args)(x, t))
    y = torch.rand(6, 5, generator=g)
    bargs = (w, None, None, "sum", w * 2)
    torch.testing.assert_close(
        smoothing_ext.binary_cross_entropy_with_logits(x, y, *bargs), F.binary_cross_entropy_with_logits(x, y, *bargs)
    )
    torch.testing.assert_close(smoothing_ext.BCEWithLogitsLoss(*bargs)(x, y), torch.nn.BCEWithLogitsLoss(*bargs)(x, y))


def _warned(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(r.message) for r in rec if issubclass(r.category, UserWarning)]


@pytest.mark.parametrize("size_average, reduce", list(itertools.product([None, True, False], repeat=2)))
def test_deprecated_size_average_and_reduce(size_average, reduce):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g)
    t = torch.randint(0, 5, (6,), generator=g)
    y = torch.rand(6, 5, generator=g)
    cases = [
        (lambda: smoothing_ext.cross_entropy(x, t, None, size_average, -100, reduce),
         lambda: F.cross_entropy(x, t, None, size_average, -100, reduce)),
        (lambda: smoothing_ext.CrossEntropyLoss(None, size_average, -100, reduce)(x, t),
         lambda: torch.nn.CrossEntropyLoss(None, size_average, -100, reduce)(x, t)),
        (lambda: smoothing_ext.binary_cross_entropy_with_logits(x, y, None, size_average, reduce),
         lambda: F.binary_cross_entropy_with_logits(x, y, None, size_average, reduce)),
        (lambda: smoothing_ext.BCEWithLogitsLoss(None, size_average, reduce)(x, y),
         lambda: torch.nn.BCEWithLogitsLoss(None, size_average, reduce)(x, y)),
    ]
    for ours, theirs in cases:
        (o, ow), (r, rw) = _warned(ours), _warned(theirs)
        torch.testing.assert_close(o, r)
        assert ow == rw  # PyTorch's deprecation warning, when it gives one


def test_two_positional_legacy_arguments_are_not_ignore_index():
    # CrossEntropyLoss(None, True) is (weight, size_average): ignore_index stays -100
    m, ref = smoothing_ext.CrossEntropyLoss(None, True), torch.nn.CrossEntropyLoss(None, True)
    assert (m.ignore_index, m.reduction) == (ref.ignore_index, ref.reduction)


def test_repr_state_dict_and_pickling_are_torchs():
    w = torch.rand(5)
    for kw in (dict(), dict(weight=w, ignore_index=2, reduction="sum", label_smoothing=0.1)):
        ours, theirs = smoothing_ext.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw)
        assert repr(ours) == repr(theirs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        ours.load_state_dict(theirs.state_dict())
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert type(loaded) is smoothing_ext.CrossEntropyLoss and repr(loaded) == repr(ours)
        assert vars(copy.deepcopy(ours)).keys() == vars(ours).keys()
    assert repr(smoothing_ext.BCEWithLogitsLoss(w, pos_weight=w)) == repr(torch.nn.BCEWithLogitsLoss(w, pos_weight=w))
    assert (smoothing_ext.BCEWithLogitsLoss(pos_weight=w).state_dict().keys()
            == torch.nn.BCEWithLogitsLoss(pos_weight=w).state_dict().keys())


def test_our_options_show_in_repr_only_when_set():
    m = smoothing_ext.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4, softcap=30.0, smoothing_mode="off_target")
    r = repr(m)
    assert r.startswith("CrossEntropyLoss(") and "z_loss=0.0001" in r and "softcap=30.0" in r
    assert "smoothing_mode='off_target'" in r and "return_z_loss" not in r and "grad_in_forward" not in r
    assert repr(smoothing_ext.BCEWithLogitsLoss(label_smoothing=0.2)) == "BCEWithLogitsLoss(label_smoothing=0.2)"


def test_torch_arguments_are_checked_in_the_forward():
    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for kw in (dict(label_smoothing=2.0), dict(reduction="avg")):
        m, ref = smoothing_ext.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw)  # both construct
        with pytest.raises(Exception) as theirs:
            ref(x, t)
        with pytest.raises(type(theirs.value)):
            m(x, t)


def test_timm_spelling():
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    m = smoothing_ext.LabelSmoothingCrossEntropy(smoothing=0.2)
    assert m.label_smoothing == 0.2
    torch.testing.assert_close(m(x, t), F.cross_entropy(x, t, label_smoothing=0.2))
    with pytest.raises(ValueError, match="same argument"):
        smoothing_ext.LabelSmoothingCrossEntropy(0.3, smoothing=0.2)


def test_1d_input_with_a_one_element_target():
    x, t = torch.randn(5), torch.tensor([3])
    for reduction in ("none", "mean", "sum"):
        ours, theirs = smoothing_ext.cross_entropy(x, t, reduction=reduction), F.cross_entropy(x, t, reduction=reduction)
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs)


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("shape", [(4, 0), (0, 0), (0,), (3, 0, 2)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["ignored", "probabilities"])
def test_zero_classes(shape, reduction, label_smoothing, kind):
    cdim = 0 if len(shape) == 1 else 1
    tshape = shape[:cdim] + shape[cdim + 1:]
    target = torch.full(tshape, -100) if kind == "ignored" else torch.rand(shape)
    x = torch.randn(shape, requires_grad=True)
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    ours = smoothing_ext.cross_entropy(x, target, **kw)
    if shape == (3, 0, 2) and kind == "ignored":
        # PyTorch itself fails on this input (its nll_loss2d path reshapes (3, 0, 2) wrongly), so
        # its values cannot be the oracle: ours follows the (N, 0) rule, checked on the 2-d input.
        with pytest.raises(RuntimeError):
            F.cross_entropy(x, target, **kw)
        theirs = F.cross_entropy(x.detach().movedim(1, -1).reshape(target.numel(), 0), target.reshape(-1), **kw)
        theirs = theirs.reshape(tshape) if reduction == "none" else theirs
    else:
        theirs = F.cross_entropy(x, target, **kw)
    _same(ours, theirs)
    (g,) = torch.autograd.grad(ours.sum(), x)
    assert g.shape == x.shape


def test_zero_classes_with_a_live_target_is_out_of_bounds():
    x, t = torch.randn(4, 0), torch.tensor([-100, 0, -100, 2])
    with pytest.raises(IndexError) as theirs:
        F.cross_entropy(x, t)
    with pytest.raises(IndexError, match="Target 0 is out of bounds") as ours:
        smoothing_ext.cross_entropy(x, t)
    assert str(theirs.value) in str(ours.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    "shape, target", [((4, 5), "index"), ((4, 5, 3), "index"), ((5,), "index"), ((4, 5), "prob"), ((4, 5, 3), "prob")]
)
def test_meta_device(shape, target, reduction, dtype):
    x = torch.randn(shape, device="meta", dtype=dtype, requires_grad=True)
    cdim = 0 if len(shape) == 1 else 1
    if target == "index":
        t = torch.zeros(shape[:cdim] + shape[cdim + 1:], dtype=torch.long, device="meta")
    else:
        t = torch.rand(shape, device="meta", dtype=dtype)
    w = torch.rand(shape[cdim], device="meta", dtype=dtype)
    for kw in (dict(), dict(weight=w, label_smoothing=0.1)):
        ours = smoothing_ext.cross_entropy(x, t, reduction=reduction, **kw)
        theirs = F.cross_entropy(x, t, reduction=reduction, **kw)
        assert ours.device.type == "meta" and ours.shape == theirs.shape and ours.dtype == theirs.dtype
        (g,) = torch.autograd.grad(ours.sum(), x)
        assert g.shape == x.shape and g.device.type == "meta"


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_meta_device_bce(reduction):
    x = torch.randn(4, 5, device="meta", requires_grad=True)
    y = torch.rand(4, 5, device="meta", dtype=torch.float64)
    w = torch.rand(5, device="meta")
    ours = smoothing_ext.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=w, label_smoothing=0.1)
    theirs = F.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=w)
    assert ours.device.type == "meta" and ours.shape == theirs.shape and ours.dtype == theirs.dtype
    (g,) = torch.autograd.grad(ours.sum(), x)
    assert g.shape == x.shape


@pytest.mark.parametrize("shape", [(0,), (4, 0), (0, 5)], ids=str)
def test_empty_bce(shape):
    x, y = torch.randn(shape, requires_grad=True), torch.rand(shape)
    for reduction in ("none", "mean", "sum"):
        _same(smoothing_ext.binary_cross_entropy_with_logits(x, y, reduction=reduction),
              F.binary_cross_entropy_with_logits(x, y, reduction=reduction))
