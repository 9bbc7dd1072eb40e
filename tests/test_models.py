import pytest
import torch

from imagefit.config import ModelConfig
from imagefit.errors import ImagefitError
from imagefit.models import REGISTRY, GlobalMaxPool, check_options, count_params, create_model, input_stats


def test_he_cifar_resnets_have_the_papers_parameter_counts():
    assert count_params(create_model(10, ModelConfig(model="resnet20"))) == 269_722  # "0.27M"
    assert count_params(create_model(10, ModelConfig(model="resnet56"))) == 853_018  # "0.85M"


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet"])
def test_cifar_stem_keeps_resolution_and_outputs_logits(name):
    model = create_model(7, ModelConfig(model=name, widths=[8, 16], blocks=[1, 1], dropout=0.2)).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_resnet18_cifar_stem_differs_from_imagenet_stem():
    cifar = create_model(10, ModelConfig(model="resnet18", stem="cifar"))
    imagenet = create_model(10, ModelConfig(model="resnet18", stem="imagenet"))
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, torch.nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7)


def test_parameter_budget_is_enforced_with_the_count():
    with pytest.raises(ImagefitError, match="model resnet18 has 11,173,962 parameters, over --max-params 5,000,000"):
        create_model(10, ModelConfig(model="resnet18", max_params=5_000_000))
    small = create_model(10, ModelConfig(model="resnet", blocks=[2, 2, 2], widths=[64, 128, 256], max_params=5_000_000))
    assert count_params(small) <= 5_000_000


def test_unknown_model_suggests_the_closest():
    with pytest.raises(ImagefitError, match="unknown model 'resnt18'; did you mean resnet18"):
        create_model(10, ModelConfig(model="resnt18"))


def test_fastnet_whitening_decorrelates_patches():
    from imagefit.models import FastNet
    torch.manual_seed(0)
    model = create_model(10, ModelConfig(model="fastnet-small"))
    assert isinstance(model, FastNet) and not model.whiten.weight.requires_grad
    # correlated channels, like natural images
    base = torch.randn(64, 1, 16, 16)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn_like(base), torch.randn_like(base)], 1)
    model.init_from_data(images)
    out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # the 12 whitening filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / (len(flat) - 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    assert off_diagonal.abs().max() < 0.05 and torch.allclose(torch.diag(cov), torch.ones(12), atol=0.05)
    assert model(images[:2, :, :, :].expand(2, 3, 16, 16).repeat(1, 1, 2, 2)).shape == (2, 10)


def test_fastnet_widths_are_configurable_with_three_groups():
    from imagefit.config import Config
    model = create_model(10, ModelConfig(model="fastnet-small", widths=[24, 64, 192]))
    assert [g.conv2.out_channels for g in model.layers[:3]] == [24, 64, 192] and model.fc.in_features == 192
    assert create_model(10, ModelConfig(model="fastnet-small")).fc.in_features == 128  # its own by default
    cfg = Config()
    cfg.model.model, cfg.model.widths = "fastnet", [32, 64]
    with pytest.raises(ImagefitError, match="names its three conv groups"):
        check_options(cfg.validate().model)


def test_fastnet_res_is_built_of_torchvision_basic_blocks_under_the_challenge_budget():
    from torchvision.models.resnet import BasicBlock

    from imagefit.config import Config
    model = create_model(10, ModelConfig(model="fastnet-res", max_params=5_000_000))
    assert count_params(model) <= 5_000_000
    assert [len(g.blocks) for g in model.layers[:3]] == [1, 1, 1]
    assert all(isinstance(b, BasicBlock) and not b.bn1.weight.requires_grad for g in model.layers[:3] for b in g.blocks)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    deeper = create_model(10, ModelConfig(model="fastnet-res", blocks=[1, 2, 1], widths=[32, 64, 96]))
    assert [len(g.blocks) for g in deeper.layers[:3]] == [1, 2, 1] and deeper.fc.in_features == 96
    with pytest.raises(ImagefitError, match="over --max-params 1,000,000"):
        create_model(10, ModelConfig(model="fastnet-res", max_params=1_000_000))
    cfg = Config()
    cfg.model.model, cfg.model.blocks = "fastnet-res", [1, 0, 1]
    with pytest.raises(ImagefitError, match="each at least 1"):
        check_options(cfg.validate().model)
    cfg.model.model, cfg.model.blocks = "fastnet", [1, 1, 1]
    with pytest.raises(ImagefitError, match="--blocks does not apply to --model fastnet"):
        check_options(cfg.validate().model)


def test_configurable_resnet_needs_as_many_widths_as_stages():
    with pytest.raises(ImagefitError, match="must name the same number of stages"):
        check_options(ModelConfig(model="resnet", blocks=[1, 1], widths=[8]))


def test_registry_entries_state_the_statistics_of_their_pretrained_weights():
    assert input_stats(ModelConfig(model="resnet18", pretrained="imagenet")) == ([0.485, 0.456, 0.406],
                                                                                  [0.229, 0.224, 0.225])
    assert input_stats(ModelConfig(model="resnet18")) is None  # from scratch: the training set's own statistics
    with pytest.raises(ImagefitError, match="has weights for resnet18, resnet34 and resnet50, not --model resnet20"):
        check_options(ModelConfig(model="resnet20", pretrained="imagenet"))


# modules whose CUDA backward has no deterministic kernel: with --deterministic, PyTorch refuses them at the first
# backward on a GPU (AdaptiveMaxPool2d did so in the fast nets on an H200), while the CPU runs them silently
_NOT_DETERMINISTIC_ON_CUDA = (torch.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool3d,
                              torch.nn.MaxPool3d, torch.nn.FractionalMaxPool2d, torch.nn.FractionalMaxPool3d,
                              torch.nn.ReflectionPad1d, torch.nn.ReflectionPad2d, torch.nn.ReplicationPad1d,
                              torch.nn.ReplicationPad2d, torch.nn.Upsample, torch.nn.EmbeddingBag)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_can_train_deterministically_on_cuda(name):
    extra = {"widths": [8, 16], "blocks": [1, 1]} if name == "resnet" else {}
    model = create_model(10, ModelConfig(model=name, **extra))
    refused = [type(m).__name__ for m in model.modules() if isinstance(m, _NOT_DETERMINISTIC_ON_CUDA)]
    # an average-pool to 1×1 runs as a mean, whose backward is deterministic; to any other size it is not
    refused += [f"AdaptiveAvgPool2d({m.output_size})" for m in model.modules()
                if isinstance(m, torch.nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1))]
    assert not refused


def test_global_max_pool_is_adaptive_max_pool_forward_and_backward():
    x = torch.randn(4, 8, 3, 3, requires_grad=True)  # continuous values: no ties, where the two share differently
    ours, theirs = GlobalMaxPool()(x), torch.nn.AdaptiveMaxPool2d(1)(x)
    assert torch.equal(ours, theirs)
    w = torch.randn_like(ours)
    assert torch.equal(*(torch.autograd.grad((y * w).sum(), x)[0] for y in (ours, theirs)))
