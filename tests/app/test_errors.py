"""Errors a person can read: each entry point, run as a user runs it, prints one block naming the file
or the config key and the fix, no stack trace, and exits with 1.

The failures from below us are made to happen, never really: the weights download fails in a patched
``torch.hub.download_url_to_file`` (as it does without network: ``URLError(gaierror(-2, ...))``), the
GPU is hidden with ``CUDA_VISIBLE_DEVICES=""``, out of memory is raised by a patched forward. The
scenarios run as processes two at a time (each is mostly interpreter start-up).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from frcnn.app.errors import TRACE_HINT, explain
from frcnn.app.preemption import stopped_message
from tests.app.helpers import tiny_overrides
from tests.app.processes import fault, run_entry, user_env

NO_NETWORK = """
    import socket, urllib.error, torch.hub
    def download_url_to_file(url, dst, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    torch.hub.download_url_to_file = download_url_to_file
"""
OUT_OF_MEMORY = """
    import torch
    from frcnn.modeling import detector
    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)")
    detector.FasterRCNN.forward = forward
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("errors")
    # A dataset with one truncated JPEG (cut in half, as an interrupted copy leaves it).
    bad_data = tmp / "data"
    shutil.copytree(data_dir, bad_data)
    truncated = bad_data / "shapes" / "JPEGImages" / "train_00003.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    # Checkpoints that are not usable: half a zip, empty, a bare state dict.
    half = tmp / "half.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, half)
    half.write_bytes(half.read_bytes()[:600])
    empty = tmp / "empty.ckpt"
    empty.write_bytes(b"")
    foreign = tmp / "foreign.ckpt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, foreign)
    image = data_dir / "shapes" / "JPEGImages" / "val_00000.jpg"
    torch_home = tmp / "torch_home"

    def train(name, *extra, single_process=True):
        return ["train", [*tiny_overrides(data_dir, single_process), "test=false", f"hydra.run.dir={tmp / name}",
                          *extra]]

    scenarios = {
        "truncated_jpeg": [*train("truncated_jpeg", f"paths.data_dir={bad_data}"), user_env()],
        "no_gpu": [*train("no_gpu", "trainer=gpu", single_process=False), user_env(CUDA_VISIBLE_DEVICES="")],
        "no_network": [*train("no_network", "backbone=resnet18", "backbone.weights=IMAGENET1K_V1"),
                       user_env(fault(tmp / "net", NO_NETWORK), TORCH_HOME=str(torch_home))],
        "out_of_memory": [*train("out_of_memory"), user_env(fault(tmp / "oom", OUT_OF_MEMORY))],
        "eval_truncated_ckpt": ["eval", [f"ckpt_path={half}", f"hydra.run.dir={tmp / 'eval'}"], user_env()],
        "predict_empty_ckpt": ["predict", [f"ckpt_path={empty}", f"input={image}", f"hydra.run.dir={tmp / 'pred'}"],
                               user_env()],
        "export_foreign_ckpt": ["export", [f"ckpt_path={foreign}", f"output={tmp / 'm.onnx'}",
                                           f"hydra.run.dir={tmp / 'export'}"], user_env()],
        "serve_missing_ckpt": ["serve", [f"ckpt_path={tmp / 'missing.ckpt'}", f"hydra.run.dir={tmp / 'serve'}"],
                               user_env()],
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_entry, entry, args, env) for name, (entry, args, env) in scenarios.items()}
        results = {name: future.result() for name, future in futures.items()}
    return results, {"truncated": truncated, "half": half, "empty": empty, "foreign": foreign,
                     "cache": torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"}


EXPECTED = {  # scenario -> the lines a user must see (the files are added below)
    "truncated_jpeg": ["error: bad data: 1 problem(s) in the train split", "truncated or corrupt",
                       "data.on_bad_image=skip"],
    "no_gpu": ["error: no usable GPU on this machine", "trainer.accelerator=gpu", "fix: trainer=cpu"],
    "no_network": ["error: no network for the weights download: ResNet18_Weights.IMAGENET1K_V1",
                   "https://download.pytorch.org/models/resnet18-f37072fd.pth", "Name or service not known",
                   "backbone.weights=null backbone.weights_path=<file>", "init_from=<file>"],
    "out_of_memory": ["error: out of memory on the GPU: CUDA out of memory", "data.batch_size=4 images",
                      "model.transform.min_size=128 / model.transform.max_size=128", "trainer.precision=bf16-mixed"],
    "eval_truncated_ckpt": ["error: bad checkpoint:", "is truncated: a zip archive (600 bytes) whose end is missing"],
    "predict_empty_ckpt": ["error: bad checkpoint:", "is empty (0 bytes)"],
    "export_foreign_ckpt": ["error: export failed: cannot export", "is not a checkpoint of this project: it holds a "
                            "bare state dict", "init_from=<file>"],
    "serve_missing_ckpt": ["error: bad checkpoint: checkpoint not found:"],
}
FILES = {"truncated_jpeg": "truncated", "eval_truncated_ckpt": "half", "predict_empty_ckpt": "empty",
         "export_foreign_ckpt": "foreign", "no_network": "cache"}


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_one_block_naming_the_file_and_the_fix_and_no_trace(outcomes, scenario):
    results, files = outcomes
    proc = results[scenario]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"{scenario}: exit {proc.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output and 'File "' not in output, output[-4000:]
    for line in EXPECTED[scenario]:
        assert line in proc.stderr, f"{scenario}: {line!r} not in\n{proc.stderr[-3000:]}"
    if scenario in FILES:
        assert str(files[FILES[scenario]]) in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("error: ") == 1 and TRACE_HINT in proc.stderr  # one block, and how to see more
    assert not files["cache"].exists()  # nothing was downloaded


def test_a_bug_keeps_its_trace_and_a_known_error_its_cause():
    assert explain(KeyError("model")) is None  # not recognised: the trace is the message
    try:
        try:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault. ")
        except RuntimeError as error:
            raise ValueError("wrapped") from error
    except ValueError as wrapped:
        message = explain(wrapped)
    assert message.startswith("a data-loading worker process (pid 4242) died: killed by a segmentation fault")
    assert "data.num_workers=0" in message
    cpu = explain(RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 8589934592 bytes."))
    assert cpu.startswith("out of memory on the CPU") and "data.num_workers=1" in cpu


def test_verbose_adds_the_trace(data_dir, tmp_path):
    proc = run_entry("eval", [f"ckpt_path={tmp_path / 'none.ckpt'}", f"hydra.run.dir={tmp_path}", "verbose=true"])
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "frcnn.app.checkpoint_file.CheckpointError" in proc.stderr
    assert "error: bad checkpoint: checkpoint not found" in proc.stderr


def test_stopped_message_names_the_signal_and_the_resume_command():
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    stop = SIGTERMException()
    stop.stop_signal, stop.checkpoint_path, stop.checkpoint_step = signal.SIGUSR1, "/run/last.ckpt", 12
    message, status = stopped_message(stop)
    assert status == 128 + signal.SIGUSR1
    assert message.splitlines() == [
        "stopped by SIGUSR1 (SLURM's time-limit warning) at the end of global step 12",
        "  training state written to /run/last.ckpt",
        "  resume: python src/train.py <the same options> ckpt_path=/run/last.ckpt",
    ]
