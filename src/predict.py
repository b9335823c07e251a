"""Detect objects in images: ``python src/predict.py ckpt_path=<ckpt> input=<image or folder> output_dir=<dir>``.

A video (``input=clip.mp4``) gives ``<output_dir>/clip.jsonl`` (one JSON line per frame) and
``<output_dir>/clip_boxes.mp4`` (``frcnn.app.video``). ``min_score``, ``only_classes`` and
``ignore_classes`` filter the detections of images and videos alike.
``runtime=onnxruntime|openvino model_path=<file.onnx>`` runs a model exported by src/export.py instead
of the checkpoint (class names and the label map come from the model's metadata).

Writes ``<output_dir>/detections.json`` (COCO results with the dataset's category ids, plus
``category_name`` and ``file_name``), ``<output_dir>/images.json`` (image id -> file, size) and,
with ``draw=true``, ``<output_dir>/images/<name>.png`` with the boxes scoring at least
``draw_score_threshold`` drawn. The checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.io import write_png  # noqa: E402

from frcnn.api.backend import TorchBackend, default_device  # noqa: E402
from frcnn.api.detector import Detector  # noqa: E402
from frcnn.api.filters import kept_labels, select  # noqa: E402
from frcnn.app.build import ConfigError  # noqa: E402
from frcnn.app.checkpoint import inference_module  # noqa: E402
from frcnn.app.draw import draw_detections  # noqa: E402
from frcnn.app.errors import report_errors  # noqa: E402
from frcnn.app.predict_io import ImageFiles, coco_results, collate_images, find_images, write_json  # noqa: E402
from frcnn.app.runtime import setup_runtime  # noqa: E402
from frcnn.app.video import is_video, predict_video  # noqa: E402
from frcnn.data import Problem  # noqa: E402
from frcnn.data.bad_images import BadImageLog  # noqa: E402

log = logging.getLogger(__name__)


def exported_backend(cfg: DictConfig):
    """runtime=onnxruntime|openvino: the exported ``cfg.model_path`` (``frcnn.export.runtimes``)."""
    from frcnn.export.runtimes import load_backend

    if not cfg.get("model_path"):
        raise ConfigError(f"runtime={cfg.runtime} runs an exported model: pass model_path=<file.onnx> (src/export.py)")
    setup_runtime(cfg)
    return load_backend(cfg.runtime, cfg.model_path, cfg.get("threads"))


def skip_bad_images(raw: list[dict], log_file: Path) -> list[dict]:
    """on_bad_image=skip: the predictions of images that could not be read left out, listed, counted."""
    bad = [Problem(pred["file_name"], pred["bad_image"]) for pred in raw if "bad_image" in pred]
    if bad:
        BadImageLog(log_file).record("predict", bad)
        log.warning("%d of %d images skipped (on_bad_image=skip), listed in %s; first: %s", len(bad), len(raw),
                    log_file, bad[0])
    return [pred for pred in raw if "bad_image" not in pred]


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run the checkpoint's detector (or, with ``runtime=onnxruntime|openvino``, the exported
    ``model_path=``) over ``cfg.input``; returns the paths written and the results."""
    exported = cfg.get("runtime", "torch") != "torch"
    source = exported_backend(cfg) if exported else inference_module(cfg)  # class names, label map
    min_score = cfg.get("min_score") if cfg.get("min_score") is not None else cfg.get("score_threshold")
    labels = kept_labels(source.class_names, cfg.get("only_classes"), cfg.get("ignore_classes"))
    if is_video(cfg.input):
        backend = source if exported else TorchBackend(source.model, source.class_names, default_device())
        return predict_video(Detector(backend, batch_size=cfg.batch_size), cfg.input, cfg.output_dir, cfg.batch_size,
                             min_score, labels, cfg.get("draw", True), cfg.draw_score_threshold)
    files = find_images(cfg.input)
    dataset = ImageFiles(files, cfg.get("on_bad_image", "error"))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate_images)
    if exported:
        raw = [{**det, **meta} for images, metas in loader for det, meta in zip(source(images), metas)]
    else:
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
        raw = [pred for batch in trainer.predict(source, dataloaders=loader) for pred in batch]
    output_dir = Path(cfg.output_dir)
    raw = skip_bad_images(raw, output_dir / "bad_images.tsv")
    predictions = [{**pred, **select({key: pred[key] for key in ("boxes", "scores", "labels")}, min_score, None, labels)}
                   for pred in raw]

    results = coco_results(predictions, source.class_names, source.label_to_category_id)
    json_path = write_json(output_dir / "detections.json", results)
    images = []
    for pred in predictions:
        image, _ = dataset[pred["image_id"]]
        images.append({"id": pred["image_id"], "file_name": pred["file_name"],
                       "height": int(image.shape[1]), "width": int(image.shape[2])})
        if cfg.get("draw", True):
            drawn = draw_detections(image, None, pred, source.class_names, cfg.draw_score_threshold)
            png = output_dir / "images" / f"{pred['image_id']:06d}_{Path(pred['file_name']).stem}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            write_png(drawn, str(png))
    write_json(output_dir / "images.json", images)
    log.info("%d detections on %d images -> %s", len(results), len(files), json_path)
    return {"json": json_path, "results": results, "images": images, "output_dir": output_dir}


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    report_errors(predict, cfg)  # a failure the user can fix: one block, no stack trace


if __name__ == "__main__":
    main()
