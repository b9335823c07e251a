"""Where a backbone's starting weights come from: torchvision's named weights, or a local file."""

from __future__ import annotations

import contextlib
import http.client
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights

from .backbone import IMAGENET_MEAN, IMAGENET_STD


def resolve_weights(arch: str, weights: str) -> WeightsEnum:
    """The torchvision weights of classification model ``arch`` called ``weights``.

    Accepts ``"IMAGENET1K_V1"``, ``"DEFAULT"`` or the full ``"ResNet50_Weights.IMAGENET1K_V2"``.
    Resolving downloads nothing; building the model with the result does.
    """
    enum_cls = get_model_weights(arch)
    try:
        return enum_cls.verify(weights)
    except KeyError:
        known = ", ".join([*enum_cls.__members__])
        raise ValueError(f"unknown weights {weights!r} for {arch}; known: {known}") from None


class WeightsDownloadError(OSError):
    """Torchvision weights that could not be fetched (no network, a proxy, a refused download).

    Attributes: ``weights`` (e.g. ``ResNet50_Weights.IMAGENET1K_V2``), ``url``, ``cache_file`` (where
    torchvision keeps the file once downloaded: a copy placed there is used without network).
    """

    def __init__(self, weights: WeightsEnum, cause: BaseException) -> None:
        self.weights = f"{type(weights).__name__}.{weights.name}"
        self.url = weights.url
        self.cache_file = cached_weights_path(weights)
        super().__init__(f"could not download the torchvision weights {self.weights} from {self.url} "
                         f"({type(cause).__name__}: {cause}); once downloaded they live in {self.cache_file}")


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches ``weights``: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


@contextlib.contextmanager
def downloading(weights: WeightsEnum | None) -> Iterator[None]:
    """Around code that may download ``weights``: a network failure becomes a ``WeightsDownloadError``
    naming the weights, the URL and the cache file."""
    try:
        yield
    except (OSError, http.client.HTTPException) as error:
        if weights is None or isinstance(error, FileNotFoundError | PermissionError):
            raise
        raise WeightsDownloadError(weights, error) from error


def weights_statistics(
    weights: WeightsEnum,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The (mean, std) per RGB channel, for pixels in [0, 1], that ``weights`` were trained with.

    Read from the weights' own preprocessing because they differ: ImageNet's statistics for most,
    but VGG16's ``IMAGENET1K_FEATURES`` (the original Caffe weights) want std 1/255.
    """
    preset_kwargs = getattr(weights.transforms, "keywords", {})
    return tuple(preset_kwargs.get("mean", IMAGENET_MEAN)), tuple(preset_kwargs.get("std", IMAGENET_STD))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict saved with ``torch.save`` from ``path``, on the CPU, without unpickling code.

    Accepts a raw state dict or a checkpoint holding one under ``"state_dict"`` or ``"model"``;
    a ``"module."`` prefix (left by DataParallel / DDP) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"cannot read a state dict from {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def key_mismatches(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], optional: Iterable[str] = (), source: str = "file"
) -> str:
    """'' when ``state`` has exactly the keys and shapes of ``expected``; otherwise one line each for
    the missing, unexpected and mis-shaped keys (a few named, the rest counted), so a wrong file is
    found at once. ``optional`` keys and every ``num_batches_tracked`` (kept by ``BatchNorm2d``, not by
    ``FrozenBatchNorm2d``) may be absent. ``source`` names ``state``'s side in the shape lines."""
    optional = set(optional)
    missing = sorted(k for k in expected.keys() - state.keys() if k not in optional and not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    mis_shaped = [
        f"{k}: {source} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & state.keys())
        if state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mis_shaped):
        return ""
    return (
        f"\n  missing keys ({len(missing)}): {_some(missing)}"
        f"\n  unexpected keys ({len(unexpected)}): {_some(unexpected)}"
        f"\n  shape mismatches ({len(mis_shaped)}): {_some(mis_shaped)}"
    )


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error that names ``source`` and every
    missing, unexpected or mis-shaped key (``key_mismatches``)."""
    problems = key_mismatches(model.state_dict(), state_dict)
    if problems:
        raise ValueError(f"weights in {source} do not match {type(model).__name__}:{problems}")
    model.load_state_dict(state_dict, strict=True)


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
