import pytest
import torch

from tests.conftest import run_train, smoke_args


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path, vgg_weights, train_dir):
    run = tmp_path / "ddp"
    proc = run_train(smoke_args(run, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["fast_style"]["training"]["trainer"]["strategy"] == "ddp"
    assert (run / "starry_night.safetensors").is_file()
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank really ran
