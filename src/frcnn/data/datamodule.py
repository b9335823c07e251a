"""``DetectionDataModule``: sources + augmentation -> validated datasets -> batched loaders.

Built by Hydra from ``conf/data/<name>.yaml`` (``_target_`` plus nested ``_target_`` for the sources
and augmentations; keys mirror the constructor). Class names are known at construction (the sources
read only their category list), so the model config can interpolate ``${data.num_classes}`` and a
checkpoint can store ``class_names`` before any image is read. ``setup`` reads the annotations,
runs the data check (``frcnn.data.validate``) and raises ``DataError`` naming every bad file, or
logs one counted warning per kind of documented fix (clip, drop).

Batches are ``(list[image], list[target])`` (docs/contracts.md). Training batches of more than one
image are aspect-ratio grouped; under DDP the index sampler is a ``DistributedSampler`` (Lightning
injects its own when ``use_distributed_sampler`` is on), so every rank gets the same number of batches.
"""

from __future__ import annotations

import logging

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from frcnn.data.bad_images import BAD_IMAGE, BadImageLog, check_policy
from frcnn.data.batching import GroupedBatchSampler, orientation_groups
from frcnn.data.dataset import DetectionDataset, collate_detection
from frcnn.data.loader import ResumableDataLoader
from frcnn.data.records import DataError, ImageRecord, Problem, Source
from frcnn.data.repeat_factor import repeat_factor_batches
from frcnn.data.transforms import Augmentation
from frcnn.data.validate import CHECK_MODES, counted_warnings, raise_for_problems, validate_records

log = logging.getLogger(__name__)

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def load_split(source: Source, check_images: str) -> tuple[list[ImageRecord], list[Problem]]:
    """Read and validate one split; drop images without training boxes unless the source keeps them."""
    records, problems = source.load()
    records, check_problems = validate_records(records, check_images)
    if not source.keep_empty:
        records = [r for r in records if len(r.boxes) > 0]
    return records, problems + check_problems


class DetectionDataModule(L.LightningDataModule):
    """Detection data for Lightning.

    Args:
        train: the training split's source (``CocoSource``, ``VocSource``, ``YoloSource``, ``CsvSource``,
            ``ConcatSource``, ``ShapesSource``).
        val: the validation split's source.
        test: the test split's source (default: ``val``).
        predict: the prediction split's source (default: ``test``).
        train_aug: training augmentation (default: none).
        eval_aug: evaluation augmentation, for val / test / predict (default: none).
        num_classes: K, as the config states it for the model; must equal the sources' class count.
        batch_size: training images per batch; eval_batch_size: evaluation (default: batch_size).
        num_workers, pin_memory, persistent_workers: as in ``DataLoader`` (persistent only with workers).
        aspect_ratio_grouping: group training batches by orientation (batch_size > 1).
        check_images: "full", "header" or "off": how hard setup checks the image files.
        on_bad_image: "error" (stop, naming every unreadable image) or "skip" (leave them out, log how many
            and list them in ``bad_image_log``); ``frcnn.data.bad_images``.
        bad_image_log: the file the skipped images are appended to (the run folder's ``bad_images.tsv``).
        dataset_yaml: YOLO's dataset YAML (or folder) that the split sources of ``conf/data/yolo.yaml``
            interpolate, so that one override names it; kept for the data check's report.
        repeat_factor_threshold: t of LVIS's repeat-factor sampling of the training images
            (``frcnn.data.repeat_factor``; e.g. 0.1); None: every image once per epoch.
        sampler_seed: seed of the repeat-factor draw (the same on every DDP rank).
    """

    def __init__(
        self,
        train: Source,
        val: Source,
        test: Source | None = None,
        predict: Source | None = None,
        train_aug: Augmentation | None = None,
        eval_aug: Augmentation | None = None,
        num_classes: int | None = None,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        aspect_ratio_grouping: bool = True,
        check_images: str = "header",
        dataset_yaml: str | None = None,
        on_bad_image: str = "error",
        bad_image_log: str | None = None,
        repeat_factor_threshold: float | None = None,
        sampler_seed: int = 0,
    ) -> None:
        super().__init__()
        test = test if test is not None else val
        self.sources: dict[str, Source] = {"train": train, "val": val, "test": test,
                                           "predict": predict if predict is not None else test}
        self.train_aug = train_aug or Augmentation()
        self.eval_aug = eval_aug or Augmentation()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.aspect_ratio_grouping = aspect_ratio_grouping
        if check_images not in CHECK_MODES:
            raise ValueError(f"check_images must be one of {CHECK_MODES}, got {check_images!r}")
        self.check_images = check_images
        self.dataset_yaml = dataset_yaml
        self.on_bad_image = check_policy(on_bad_image)
        self.bad_image_log = BadImageLog(bad_image_log)
        self.repeat_factor_threshold = repeat_factor_threshold
        self.sampler_seed = sampler_seed

        self.class_names: list[str] = list(train.class_names)
        self.label_to_category_id: dict[int, int] = {
            label: int(category_id) for label, category_id in enumerate(train.category_ids, start=1)
        }
        for split, source in self.sources.items():
            if list(source.class_names) != self.class_names:
                raise DataError(f"the {split} split's classes {list(source.class_names)} differ from the train "
                                f"split's {self.class_names} ({source} vs {train})")
        if num_classes is not None and num_classes != len(self.class_names):
            raise DataError(f"the data config says num_classes={num_classes} but {train} has "
                            f"{len(self.class_names)} classes: {self.class_names}")
        self.datasets: dict[str, DetectionDataset] = {}

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels 1..K; 0 is background)."""
        return len(self.class_names)

    def prepare_data(self) -> None:
        """Generate or fetch files (Lightning runs this on one process per node before ``setup``)."""
        for source in {id(s): s for s in self.sources.values()}.values():
            source.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the splits the stage needs (all for None); raise ``DataError`` on bad data."""
        splits = STAGE_SPLITS[stage] if stage is not None else tuple(self.sources)
        for split in splits:
            if split in self.datasets:
                continue
            source = self.sources[split]
            same = next((s for s, d in self.datasets.items() if self.sources[s] is source), None)
            if same is not None and (split == "train") == (same == "train"):  # same files, same augmentation
                self.datasets[split] = self.datasets[same]
                continue
            records, problems = load_split(source, self.check_images)
            skipped = [p for p in problems if p.fatal and p.kind == BAD_IMAGE] if self.on_bad_image == "skip" else []
            raise_for_problems(split, source, [p for p in problems if not (p.fatal and p.kind == BAD_IMAGE)]
                               if skipped else problems)
            if skipped:  # their records were left out by the validation
                self.bad_image_log.record(split, skipped)
                log.warning("%s split of %s: %d of %d images skipped (data.on_bad_image=skip), %s; first: %s",
                            split, source, len(skipped), len(records) + len(skipped), self.bad_image_log.where(),
                            skipped[0])
            for line in counted_warnings(problems):
                log.warning("%s split of %s: %s", split, source, line)
            augmentation = self.train_aug if split == "train" else self.eval_aug
            self.datasets[split] = DetectionDataset(records, augmentation, split, self.on_bad_image,
                                                    self.bad_image_log)

    def check(self) -> dict[str, tuple[list[ImageRecord], list[Problem]]]:
        """The data check: every distinct split read and validated, problems returned, nothing raised.

        Splits reading the same files (same source description, e.g. coco128's train and val) are
        checked once, under the first split's name.
        """
        self.prepare_data()
        results: dict[str, tuple[list[ImageRecord], list[Problem]]] = {}
        seen: set[str] = set()
        for split, source in self.sources.items():
            if repr(source) not in seen:
                seen.add(repr(source))
                results[split] = load_split(source, self.check_images)
        return results

    def _dataset(self, split: str) -> DetectionDataset:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        return self.datasets[split]

    def _loader_options(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.persistent_workers, "collate_fn": collate_detection}

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        groups = orientation_groups(dataset.aspect_ratios) if self.aspect_ratio_grouping else [0] * len(dataset)
        if self.repeat_factor_threshold is not None:  # class-balanced: the sampler only names the rank
            batch_sampler = repeat_factor_batches(dataset, groups, self.repeat_factor_threshold, self.batch_size,
                                                  self.sampler_seed, distributed)
            return ResumableDataLoader(dataset, batch_sampler=batch_sampler, **self._loader_options())
        sampler = DistributedSampler(dataset, shuffle=True) if distributed else RandomSampler(dataset)
        batch_sampler = GroupedBatchSampler(sampler, groups, self.batch_size, drop_last=False)
        # resumable mid-epoch: checkpoints hold the epoch's batches and the position (frcnn.data.loader)
        return ResumableDataLoader(dataset, batch_sampler=batch_sampler, **self._loader_options())

    def _eval_dataloader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_dataloader("predict")

    def state_dict(self) -> dict:
        """Saved in checkpoints: what the labels mean."""
        return {"class_names": list(self.class_names), "label_to_category_id": dict(self.label_to_category_id)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuse to resume a checkpoint trained on other classes."""
        saved = list(state_dict.get("class_names", self.class_names))
        if saved != self.class_names:
            raise DataError(f"the checkpoint was trained on classes {saved}, this data has {self.class_names}")
