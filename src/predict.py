"""Detect objects in images: ``python src/predict.py ckpt_path=<ckpt> input=<image or folder> output_dir=<dir>``.

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

from frcnn.app import utils  # noqa: E402
from frcnn.app.draw import draw_detections  # noqa: E402
from frcnn.app.predict_io import ImageFiles, coco_results, collate_images, find_images, write_json  # noqa: E402

log = logging.getLogger(__name__)


def predict_exported(cfg: DictConfig, loader: DataLoader):
    """runtime=onnxruntime|openvino: the exported ``cfg.model_path`` (frcnn.export.runtimes) over the loader."""
    from frcnn.export.runtimes import load_backend

    if not cfg.get("model_path"):
        raise ValueError(f"runtime={cfg.runtime} runs an exported model: pass model_path=<file.onnx> (src/export.py)")
    backend = load_backend(cfg.runtime, cfg.model_path, cfg.get("threads"))
    predictions = []
    for images, metas in loader:
        for detections, meta in zip(backend(images), metas):
            predictions.append({**detections, **meta})
    return backend, predictions


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run the checkpoint's detector (or, with ``runtime=onnxruntime|openvino``, the exported
    ``model_path=``) over ``cfg.input``; returns the paths written and the results."""
    files = find_images(cfg.input)
    dataset = ImageFiles(files)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate_images)
    if cfg.get("runtime", "torch") == "torch":
        module = utils.inference_module(cfg)
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
        batches = trainer.predict(module, dataloaders=loader)
        predictions = [pred for batch in batches for pred in batch]
    else:
        module, predictions = predict_exported(cfg, loader)

    output_dir = Path(cfg.output_dir)
    results = coco_results(predictions, module.class_names, module.label_to_category_id, cfg.get("score_threshold"))
    json_path = write_json(output_dir / "detections.json", results)
    images = []
    for pred in predictions:
        image, _ = dataset[pred["image_id"]]
        images.append({"id": pred["image_id"], "file_name": pred["file_name"],
                       "height": int(image.shape[1]), "width": int(image.shape[2])})
        if cfg.get("draw", True):
            drawn = draw_detections(image, None, pred, module.class_names, cfg.draw_score_threshold)
            png = output_dir / "images" / f"{pred['image_id']:06d}_{Path(pred['file_name']).stem}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            write_png(drawn, str(png))
    write_json(output_dir / "images.json", images)
    log.info("%d detections on %d images -> %s", len(results), len(files), json_path)
    return {"json": json_path, "results": results, "images": images, "output_dir": output_dir}


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
