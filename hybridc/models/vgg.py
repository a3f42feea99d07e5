"""VGG nets of the ff-EBM paper, for 32x32 inputs (CIFAR-10/100), and the older BN-after-every-conv VGG.

Reference: T. Nest and M. Ernoult, "Towards training digitally-tied analog blocks via hybrid
gradient computation", NeurIPS 2024; reference code github.com/rain-neuromorphics/hybrid_bp_ep_official
(``hydra_conf/model/splitting_small_{1,2,3}block.yaml`` for the 6-layer net,
``splitting_large_{3,4,6}block.yaml`` for the 12-layer one, ``src/models/vgg.py`` for how a config becomes
layers). Why it is in the zoo: the paper splits one ordinary deep Hopfield network into 1, 2, 3, ... blocks
and compares them; hybridc's ``--max-block-size`` makes exactly those splits from this one model.

``VGGPaper`` (zoo ``vgg-paper``, ``layers=6``), layer by layer, with the config line it comes from
(``splitting_small_1block.yaml``: ``channels 3-128-256-256-512-512``, ``kernels 3``, ``paddings 1``,
``pools "mmmm-"``, ``norm "b"``, ``fc [256, 10]``, ``readout: true``):

====  =================================  ====================================================
 #    layer                              source
====  =================================  ====================================================
 1    Conv 3->128, no bias, MaxPool 2,   block 1 ``feedforward = Sequential(synapses[0],
      BatchNorm2d(128)                   pools[0], BatchNorm2d)`` (``norm "b"``, ``norm_pool``
                                         false: pool *before* the norm; the conv has
                                         ``bias = not(norm != '-' and idx == 0)`` = False)
 2    Conv 128->256, MaxPool 2           ``channels[2]``, ``pools[1] = "m"``
 3    Conv 256->256, MaxPool 2           ``channels[3]``, ``pools[2] = "m"``
 4    Conv 256->512, MaxPool 2           ``channels[4]``, ``pools[3] = "m"``
 5    Conv 512->512                      ``channels[5]``, ``pools[4] = "-"``
 6    Linear 512*2*2 -> 256              ``fc[0] = 256`` (inside the last energy block)
 --   Linear 256 -> 10 (digital readout)  ``readout: true`` pops ``fc[-1]`` and adds
                                         ``nn.Sequential(Flatten, LazyLinear(10))`` outside the
                                         blocks, applied to the last block's last layer
====  =================================  ====================================================

Every neuron layer is followed by the paper's activation, a hard sigmoid ``clamp(u, 0, 1)``
(``activation: 1.0`` in the configs is its slope; hybridc's ``hardsigmoid`` policy sets the slope the
energy blocks use), except the last one before the readout, which is linear: the configs' ``clamp_last:
false`` for the last block (``src/models/base.py``: the block's last layer skips the activation). Spatial side 32 -> 16 -> 8 -> 4 -> 2 -> 2: about 145 M MAC per sample at width 1.
The only BatchNorm is the one in the first layer: the other blocks have ``norm "-"``.

**Pools.** The reference's configs disagree: the 1- and 3-block configs pool after convs 1-4 (4 pools,
``fc 2048 -> 256``); the 2-block config pools after all five convs (5 pools, ``fc 512 -> 256``: its second
block's ``pools "mm-"`` has a pool for conv 5). We take the **4-pool** network: two of the three configs
agree on it, it is the one the undivided (1-block) baseline uses, and a splitting experiment must compare
splits of one network, so one config has to give way.

**Readout.** ``readout`` is a separate module (``self.readout``), the last weight layer of the graph. The
paper keeps it digital: a Linear that reads the last block's output, differentiated inside the nudge. Its
blocks, by ``--max-block-size`` (the 6 weight layers 1-6 above, readout digital): 6 -> [1-6];
3 -> [1-3 | 4-6] (the paper's 2-block split); 2 -> [1-2 | 3-4 | 5-6] (3 blocks); 1 -> six blocks.

``layers=12`` (zoo ``vgg-paper-12``): the paper's 12-layer net (``splitting_large_3block.yaml``,
``channels 3-128-128-128-128 | 128-256-256-256-256 | 256-512-512-512-512``, pools ``"--m-" "m---" "m---"``,
``norm "b"`` in every block's feedforward entry, ``fc [10]`` with ``readout: true`` -> a digital readout
only): 12 convs (the first of each 4-conv stage has a BatchNorm2d after it, as the entry of its block),
pools after convs 3, 5 and 9, so 32 -> 16 -> 8 -> 4 and the readout reads ``512 * 4 * 4`` features.
In that config the BatchNorm of each block's entry follows the pool when there is one (``norm_pool``
false), as here.

``VGGBN`` (zoo ``vgg-bn``): the network the zoo called ``vgg-paper`` before it matched the paper
(``Conv -> BatchNorm -> ReLU`` after every conv, no pool after the first conv, Linear classifier in the
chain); kept because tests and benchmarks measure against it.

``width`` scales every channel count (``max(1, round(c * width))``) so tests can build tiny versions;
``image_size`` must be divisible by the total pooling factor (16 for ``layers=6``, 8 for ``layers=12``), so
8x8 digits work with ``layers=12`` only; ``in_channels`` is a parameter. Self-contained (imports only
torch) so the file can be loaded standalone by path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_SHAPE: tuple[int, ...] = (3, 32, 32)

#: Per ``layers``: (out channels of each 3x3 conv, 1-based convs followed by a 2x2 max-pool,
#: 1-based convs followed by the BatchNorm of a block entry, hidden Linear sizes before the readout).
_PAPER: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    6: ((128, 256, 256, 512, 512), (1, 2, 3, 4), (1,), (256,)),
    12: ((128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512), (3, 5, 9), (1, 5, 9), ()),
}


def _scale(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class VGGPaper(nn.Module):
    """The ff-EBM paper's VGG (``layers`` = 6 or 12 counts the weight layers before the readout).

    Args:
        layers: 6 or 12.
        in_channels: channels of the input image.
        num_classes: size of the output (the digital readout's width).
        width: multiplier on every channel count and hidden Linear size.
        image_size: input height/width (32 for CIFAR); divisible by 2 ** (number of pools).
    """

    def __init__(
        self,
        layers: int = 6,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if layers not in _PAPER:
            raise ValueError(f"VGGPaper supports layers=6 or layers=12, got {layers}")
        channels, pool_after, bn_after, hidden = _PAPER[layers]
        factor = 2 ** len(pool_after)
        if image_size % factor != 0:
            raise ValueError(f"image_size={image_size} must be divisible by {factor} for layers={layers}")
        self.layers: int = layers
        self.num_classes: int = num_classes
        feats: list[nn.Module] = []
        c_in, side = in_channels, image_size
        for i, c in enumerate(channels, start=1):
            c_out = _scale(c, width)
            feats.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=i not in bn_after))
            if i in pool_after:
                feats.append(nn.MaxPool2d(kernel_size=2, stride=2))
                side //= 2
            if i in bn_after:
                feats.append(nn.BatchNorm2d(c_out))
            if hidden or i < len(channels):  # the last layer before the readout is linear (below)
                feats.append(nn.Hardtanh(0.0, 1.0))
            c_in = c_out
        self.features = nn.Sequential(*feats)
        head: list[nn.Module] = [nn.Flatten()]
        n_in = c_in * side * side
        for k, h in enumerate(hidden, start=1):
            h_out = _scale(h, width)
            head += [nn.Linear(n_in, h_out)] + ([nn.Hardtanh(0.0, 1.0)] if k < len(hidden) else [])
            n_in = h_out
        self.classifier = nn.Sequential(*head)
        self.readout = nn.Linear(n_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.classifier(self.features(x)))


#: VGGBN: (out channels of each conv, 1-based convs followed by a max-pool).
_BN: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    6: ((128, 256, 256, 512, 512), (2, 3, 4, 5)),
    12: ((128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512), (2, 4, 6, 9, 11)),
}


class VGGBN(nn.Module):
    """VGG with ``Conv 3x3 -> BatchNorm2d -> ReLU`` after every conv and a Linear classifier (zoo ``vgg-bn``).

    6 layers: ``c128 c256 P c256 P c512 P c512 P`` -> Flatten -> Linear (512*2*2 features); 12 layers:
    ``c128 c128 P c256 c256 P c256 c256 P c512 c512 c512 P c512 c512 P`` -> Linear (512 features).

    Args:
        layers: 6 or 12 (conv + linear weight layers).
        in_channels: channels of the input image.
        num_classes: size of the output.
        width: multiplier on every channel count.
        image_size: input height/width; divisible by 2 ** (number of pools).
    """

    def __init__(
        self,
        layers: int = 6,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if layers not in _BN:
            raise ValueError(f"VGGBN supports layers=6 or layers=12, got {layers}")
        channels, pool_after = _BN[layers]
        n_pools = len(pool_after)
        if image_size % (2**n_pools) != 0:
            raise ValueError(f"image_size={image_size} must be divisible by 2**{n_pools} for layers={layers}")
        self.layers: int = layers
        self.num_classes: int = num_classes
        feats: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels, start=1):
            c_out = _scale(c, width)
            feats += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i in pool_after:
                feats.append(nn.MaxPool2d(kernel_size=2, stride=2))
            c_in = c_out
        self.features = nn.Sequential(*feats)
        side = image_size // (2**n_pools)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def model(**kwargs) -> nn.Module:
    """Build the paper's 6-layer VGG (``VGGPaper(layers=6, ...)``)."""
    kwargs.setdefault("layers", 6)
    return VGGPaper(**kwargs)


def model12(**kwargs) -> nn.Module:
    """Build the paper's 12-layer VGG (``VGGPaper(layers=12, ...)``)."""
    kwargs.setdefault("layers", 12)
    return VGGPaper(**kwargs)


def model_bn(**kwargs) -> nn.Module:
    """Build the BN-after-every-conv 6-layer VGG (``VGGBN(layers=6, ...)``)."""
    kwargs.setdefault("layers", 6)
    return VGGBN(**kwargs)
