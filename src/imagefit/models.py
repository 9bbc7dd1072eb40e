"""The model registry: `create_model(name, num_classes, cfg)` (timm's pattern).

- `resnet18`/`resnet34`/`resnet50`: torchvision's networks. `stem="cifar"` swaps the 7×7 stride-2 conv and the
  max-pool (which shrink a 32×32 image to 8×8 before the first block) for a 3×3 stride-1 conv.
- `resnet20` … `resnet1202`: the CIFAR ResNets of He et al. 2016 (6n+2 layers, three stages of 16/32/64
  channels, parameter-free "option A" shortcuts), e.g. resnet20 has 0.27M parameters.
- `resnet`: stages of torchvision basic blocks with the blocks and widths of the config, for the parameter
  budget of the ResNet challenge (`--max-params`).

Dropout, when asked for, sits just before the linear head. Each entry names the options it takes and the input
statistics of its pretrained weights (`ModelEntry`); the optional hooks a model may offer are the Protocols
`TrainsFromData` and `EpochAware`, and the conventions every model keeps are written beside them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, flag
from .errors import ImagefitError

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # what torchvision's ImageNet weights expect
# Options every model takes; the others are named by each registry entry.
COMMON_OPTIONS = frozenset({"model", "dropout", "max_params", "init_from", "freeze_body", "pretrained"})


@runtime_checkable
class TrainsFromData(Protocol):
    """A model with a data-dependent initialization (fastnet's whitening filters): the trainer calls it once, on
    up to 5,000 normalized training images, before the first step of a run that starts from scratch."""

    def init_from_data(self, images: torch.Tensor) -> None: ...


@runtime_checkable
class EpochAware(Protocol):
    """A model whose training changes by epoch (fastnet freezes its whitening bias after a few): the trainer calls
    `set_epoch` (0-based) before each epoch."""

    def set_epoch(self, epoch: int) -> None: ...


# The rest of the contract every registry model keeps (the trainer, optimizer and transfer code rely on it):
# - the classifier is the child `fc` (a Linear, or Dropout + Linear): `is_head` finds it, --init-from with other
#   classes starts it afresh, --freeze-body leaves it learning;
# - stages, when the model has them, are the items of a child `layers` (`layer_groups` splits them for
#   discriminative rates and freezing);
# - `fresh_parameters`, when present, names parameters that start untrained although the rest is pretrained
#   (a CIFAR stem on ImageNet weights): --freeze-body leaves them learning.


@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: how to build the model, which options beyond COMMON_OPTIONS it reads, the input
    statistics of each set of pretrained weights it has (timm's pretrained configs), and a check of its options."""
    build: Callable[[int, ModelConfig], nn.Module]
    options: frozenset[str] = frozenset()
    pretrained: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    check: Callable[[ModelConfig], None] | None = None


REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, options: tuple[str, ...] = (), pretrained: dict | None = None,
             check: Callable[[ModelConfig], None] | None = None):
    def wrap(fn):
        REGISTRY[name] = ModelEntry(fn, frozenset(options), pretrained or {}, check)
        return fn
    return wrap


def check_name(name: str) -> None:
    if name not in REGISTRY:
        near = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ImagefitError(f"unknown model '{name}'; {hint}available: {', '.join(sorted(REGISTRY))}")


def check_options(cfg: ModelConfig) -> None:
    """Refuse options the model does not take (a flag away from its default) and values it cannot use, in one line."""
    check_name(cfg.model)
    entry, defaults = REGISTRY[cfg.model], ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        name = f.name
        if name not in COMMON_OPTIONS | entry.options and getattr(cfg, name) != getattr(defaults, name):
            raise ImagefitError(f"{flag(name)} does not apply to --model {cfg.model}; drop {flag(name)} "
                                f"or choose a model it applies to")
    if cfg.pretrained != "none" and cfg.pretrained not in entry.pretrained:
        having = sorted(n for n, e in REGISTRY.items() if cfg.pretrained in e.pretrained)
        raise ImagefitError(f"--pretrained {cfg.pretrained} has weights for {', '.join(having[:-1])} and "
                            f"{having[-1]}, not --model {cfg.model}")
    if entry.check:
        entry.check(cfg)


def input_stats(cfg: ModelConfig) -> tuple[list[float], list[float]] | None:
    """(mean, std) the starting weights expect of their inputs (the pretrained weights'), or None: then the
    training set's own statistics."""
    return REGISTRY[cfg.model].pretrained.get(cfg.pretrained) if cfg.pretrained != "none" else None


def create_model(num_classes: int, cfg: ModelConfig) -> nn.Module:
    """The model `cfg` names, its options checked for values it cannot build (options it ignores are refused
    earlier, when a run's config is checked: `check_options`)."""
    check_name(cfg.model)
    entry = REGISTRY[cfg.model]
    if entry.check:
        entry.check(cfg)
    model = entry.build(num_classes, cfg)
    n = count_params(model)
    if cfg.max_params and n > cfg.max_params:
        raise ImagefitError(f"model {cfg.model} has {n:,} parameters, over --max-params {cfg.max_params:,}; "
                            f"choose smaller --widths/--blocks or a smaller model")
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def norm_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the normalization layers' parameters (their own rates in optim, still learning under freezing)."""
    return {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}


def is_head(name: str) -> bool:
    """Every registry model names its classifier `fc` (a Linear, or Dropout + Linear)."""
    return name.startswith("fc.")


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names in groups from the input to the head, for discriminative rates and freezing: the model's
    top-level parts, with `layers` (our ResNets' stages, fastnet's conv groups) split into its items, and a lone
    conv or norm layer (torchvision's conv1, bn1; fastnet's whitening) joined to the part after it."""
    units = []
    for name, child in model.named_children():
        parts = [(f"{name}.{i}", c) for i, c in enumerate(child)] if name == "layers" else [(name, child)]
        units += [[f"{prefix}.{n}" for n, _ in c.named_parameters()] for prefix, c in parts]
    units = [u for u in units if u]
    groups, pending = [], []
    for i, unit in enumerate(units):
        is_leaf = all(n.count(".") == 1 for n in unit)
        if is_leaf and i < len(units) - 1 and not any(is_head(n) for n in unit):
            pending += unit
            continue
        groups.append(pending + unit)
        pending = []
    return groups


def head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    linear = nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear


# ---------------------------------------------------------------------------------------------- torchvision

def _basic_block():
    from torchvision.models.resnet import BasicBlock
    return BasicBlock


def _imagenet_weights(arch: str):
    """torchvision's best ImageNet weights for `arch`, downloaded once into torch's hub cache."""
    import torchvision
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; a bad file fails to unpickle
        from pathlib import Path
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ImagefitError(f"could not load ImageNet weights for {arch} ({type(e).__name__}: {str(e)[:60]}); "
                            f"offline, put {Path(weights.url).name} (from {weights.url}) in {cache}") from None


def _torchvision(arch: str):
    def build(num_classes: int, cfg: ModelConfig) -> nn.Module:
        import torchvision  # here, not at the top: its import takes ~2 s, which fastnet runs need not pay
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if cfg.pretrained == "imagenet":
            state = {k: v for k, v in _imagenet_weights(arch).items() if not k.startswith("fc.")}
            model.load_state_dict(state, strict=False)  # all but the 1000-class head
        if cfg.stem == "cifar":
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
            if cfg.pretrained != "none":
                model.fresh_parameters = {"conv1.weight"}  # not pretrained: --freeze-body must leave it learning
        model.fc = head(model.fc.in_features, num_classes, cfg.dropout)
        return model
    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    register(_arch, ("stem",), pretrained={"imagenet": IMAGENET_STATS})(_torchvision(_arch))


# ---------------------------------------------------------------------------------------------- CIFAR ResNets

class PadShortcut(nn.Module):
    """He et al.'s option A: subsample by the stride, zero-pad the new channels; no parameters."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class ResNet(nn.Module):
    """Stages of basic blocks; stride 2 at the start of every stage after the first.

    shortcut "projection" is torchvision's (1×1 conv + BatchNorm when shapes change); "pad" is option A.
    """

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int, *, stem: str = "cifar",
                 shortcut: str = "projection", dropout: float = 0.0):
        super().__init__()
        if any(b < 1 for b in blocks) or any(w < 1 for w in widths) or not blocks:
            raise ImagefitError(f"--blocks and --widths need positive entries (got {blocks} and {widths})")
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if stride != 1 or channels != width:
                    down = (PadShortcut(width - channels, stride) if shortcut == "pad" else
                            nn.Sequential(nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width)))
                layers.append(_basic_block()(channels, width, stride, down))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = head(channels, num_classes, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _cifar_resnet(depth: int):
    def build(num_classes: int, cfg: ModelConfig) -> nn.Module:
        n = (depth - 2) // 6
        return ResNet([n, n, n], [16, 32, 64], num_classes, stem=cfg.stem, shortcut="pad", dropout=cfg.dropout)
    return build


for _depth in (20, 32, 44, 56, 110, 1202):
    register(f"resnet{_depth}", ("stem",))(_cifar_resnet(_depth))


def _check_stages(cfg: ModelConfig) -> None:
    if len(cfg.blocks) != len(cfg.widths):
        raise ImagefitError(f"--blocks ({len(cfg.blocks)} stages) and --widths ({len(cfg.widths)} stages) must "
                            f"name the same number of stages")


@register("resnet", ("stem", "blocks", "widths"), check=_check_stages)
def _configurable(num_classes: int, cfg: ModelConfig) -> nn.Module:
    return ResNet(cfg.blocks, cfg.widths, num_classes, stem=cfg.stem, dropout=cfg.dropout)


# ---------------------------------------------------------------------------------------------- fast net

class ConvGroup(nn.Module):
    """conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN → GELU (airbench's block); with `residual_blocks`, the
    second conv is replaced by that many torchvision BasicBlocks (conv-BN-ReLU-conv-BN plus the identity, ReLU),
    their BatchNorm scales frozen like the rest (airbench96's group is this with one block)."""

    def __init__(self, cin: int, cout: int, residual_blocks: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = _frozen_scale_bn(cout)
        self.act = nn.GELU()
        self.residual = residual_blocks > 0
        if self.residual:
            block = _basic_block()
            self.blocks = nn.Sequential(*[block(cout, cout, norm_layer=_frozen_scale_bn)
                                          for _ in range(residual_blocks)])
        else:
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = _frozen_scale_bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        if self.residual:
            return self.blocks(x)
        return self.act(self.bn2(self.conv2(x)))


def _frozen_scale_bn(channels: int) -> nn.BatchNorm2d:
    # Scales frozen at 1, only the shifts learn: the convs before are then scale-invariant, so weight decay and
    # the learning rate set their effective step size alone. Running statistics follow fast (PyTorch momentum
    # 0.4) because the weights move fast at these learning rates; eps tiny as the scales never shrink.
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


class GlobalMaxPool(nn.Module):
    """The maximum over all positions, N×C×1×1: what AdaptiveMaxPool2d(1) computes, through `amax`, whose backward
    is deterministic on CUDA (adaptive_max_pool2d's is not, and refuses --deterministic there: seen on an H200).
    Gradients differ only on exact ties, where amax shares the gradient among the tied positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


class FastNet(nn.Module):
    """A small, fast CIFAR net after airbench (Keller Jordan's cifar10-airbench), from its published description:

    - a frozen 2×2 patch-whitening conv first, its filters the eigenvectors of the training patches'
      covariance scaled by 1/sqrt(eigenvalue), each with its negative (`init_from_data` sets them); its bias
      learns for the first `whiten_bias_epochs` epochs only (`set_epoch`), after which the first conv group
      needs no input gradient: the rest of the run is about 20% faster;
    - three conv groups, each halving the resolution with a max-pool, then a global max-pool and a linear head
      without bias whose output is scaled by 1/9 (a cooler softmax at the start);
    - BatchNorm scales frozen at 1 (`_frozen_scale_bn`);
    - identity (dirac) init of each conv's first `in_channels` filters: a group starts close to a
      pass-through of its input, which speeds the first epochs.
    """

    def __init__(self, num_classes: int, widths: tuple[int, int, int], dropout: float = 0.0,
                 whiten_bias_epochs: int = 3, residual_blocks: tuple[int, int, int] = (0, 0, 0)):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.whiten_bias_epochs = whiten_bias_epochs
        self.act = nn.GELU()
        cins = (24, *widths[:2])
        groups = [ConvGroup(cin, cout, n) for cin, cout, n in zip(cins, widths, residual_blocks)]
        self.layers = nn.Sequential(*groups, GlobalMaxPool())  # 3×3 at 32 px
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        if dropout > 0:
            self.fc = nn.Sequential(nn.Dropout(dropout), self.fc)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.whiten:
                nn.init.dirac_(m.weight.data[: m.in_channels])

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalized training images (N×3×H×W float)."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N×3×H'×W'×2×2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        cov = patches.T @ patches / (len(patches) - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.dtype))

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based)."""
        self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.act(self.whiten(x)))
        return self.fc(torch.flatten(x, 1)) / 9


def _fastnet(widths: tuple[int, int, int], blocks: tuple[int, int, int] = (0, 0, 0)):
    def build(num_classes: int, cfg: ModelConfig) -> nn.Module:
        defaults = ModelConfig()
        own = tuple(cfg.widths) if cfg.widths != defaults.widths else widths  # --widths, when given
        residual = tuple(cfg.blocks) if cfg.blocks != defaults.blocks else blocks  # --blocks, when given
        return FastNet(num_classes, own, cfg.dropout, cfg.whiten_bias_epochs, residual)
    return build


def _check_fastnet(cfg: ModelConfig) -> None:
    defaults = ModelConfig()
    if cfg.widths != defaults.widths and len(cfg.widths) != 3:
        raise ImagefitError(f"--widths for --model {cfg.model} names its three conv groups, e.g. 32,64,128 "
                            f"(got {len(cfg.widths)} numbers)")
    if cfg.blocks != defaults.blocks and (len(cfg.blocks) != 3 or min(cfg.blocks) < 1):
        raise ImagefitError(f"--blocks for --model {cfg.model} names the basic blocks of its three groups, "
                            f"each at least 1, e.g. 1,1,1 (got {','.join(map(str, cfg.blocks))})")


FASTNET_OPTIONS = ("widths", "whiten_bias_epochs")
register("fastnet", FASTNET_OPTIONS, check=_check_fastnet)(_fastnet((64, 256, 256)))  # airbench94's widths
register("fastnet-small", FASTNET_OPTIONS, check=_check_fastnet)(_fastnet((32, 64, 128)))
# The ResNet challenge's net (issue 3: a residual network of torchvision basic blocks, at most 5M parameters):
# airbench96's shape, one basic block after each group's conv and pool, at widths that fit the budget (4.63M).
register("fastnet-res", (*FASTNET_OPTIONS, "blocks"), check=_check_fastnet)(_fastnet((96, 256, 352), (1, 1, 1)))
