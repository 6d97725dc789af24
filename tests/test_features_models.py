import numpy as np
import pytest
import torch

from bdlib.features import PAPER_16K, PAPER_44K, MFCCExtractor
from bdlib.models import MODELS, build_model
from bdlib.registry import UnknownNameError


def test_mfcc_shapes_match_the_paper():
    x = np.random.default_rng(0).uniform(-0.1, 0.1, (3, 16000)).astype(np.float32)
    assert MFCCExtractor(PAPER_16K)(x).shape == (3, 1, 101, 40)
    x44 = np.random.default_rng(0).uniform(-0.1, 0.1, (2, 44100)).astype(np.float32)
    assert MFCCExtractor(PAPER_44K)(x44).shape == (2, 1, 100, 40)  # n_fft 1103, hop 441


def test_mfcc_batches_agree_with_single_clips():
    x = np.random.default_rng(1).uniform(-0.1, 0.1, (5, 16000)).astype(np.float32)
    ext = MFCCExtractor(PAPER_16K, batch_size=2)
    torch.testing.assert_close(ext(x)[3], ext(x[3])[0])


def test_smallcnn_shapes_and_registry():
    net = build_model("smallcnn", (101, 40), 10)
    assert net(torch.zeros(4, 1, 101, 40)).shape == (4, 10)
    assert net.fc1.in_features == 3072  # the authors' flatten size for 101×40 inputs
    with pytest.raises(UnknownNameError, match="valid models: largecnn, lstmatt, resnet, rnn, smallcnn, smalllstm"):
        build_model("resnet9000", (101, 40), 10)
    assert "smallcnn" in MODELS
