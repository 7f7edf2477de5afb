"""CPU training under bfloat16 autocast (``train.amp.cpu_dtype``) and its bad values."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers.shrink import load_config
from helpers.tiny_cli import CONFIG

from eva_det.engine.train_loop import cpu_autocast_dtype
from eva_det.engine.trainer import EVATrainer
from eva_det.errors import InputError


class _Recorder(torch.nn.Module):
    """A one-layer 'detector' that records the precision its forward pass ran in."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.seen = []

    def forward(self, batch):
        y = self.fc(batch)
        self.seen.append((torch.is_autocast_enabled("cpu"), y.dtype))
        return {"loss": y.float().pow(2).mean()}


def _batches():
    while True:
        yield torch.ones(2, 4)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_trainer_runs_the_forward_in_the_cpu_dtype(dtype):
    model = _Recorder()
    trainer = EVATrainer(
        model, _batches(), torch.optim.SGD(model.parameters(), lr=0.1), cpu_autocast_dtype=dtype
    )
    before = model.fc.weight.detach().clone()
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()
    enabled, out_dtype = model.seen[0]
    assert enabled == (dtype is not None)
    assert out_dtype == (dtype or torch.float32)
    assert model.fc.weight.dtype == torch.float32  # the weights stay float32
    assert not torch.equal(model.fc.weight, before)  # and were updated


def test_cpu_dtype_values():
    cfg = load_config(CONFIG)  # repo-relative, from any working directory
    cfg.train.amp.cpu_dtype = None
    assert cpu_autocast_dtype(cfg) is None
    cfg.train.amp.cpu_dtype = "bfloat16"
    assert cpu_autocast_dtype(cfg) is torch.bfloat16
    cfg.train.amp.cpu_dtype = "float16"
    with pytest.raises(InputError, match=r"train.amp.cpu_dtype='float16'.*bfloat16"):
        cpu_autocast_dtype(cfg)
