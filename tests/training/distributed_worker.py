"""Run by test_distributed.py under torchrun: train, then save this rank's heads for comparison."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from autodeco.training.trainer import TrainConfig, train

if __name__ == "__main__":
    base, data, out = sys.argv[1:4]
    result = train(TrainConfig(base=base, data=data, out=out, batch_size=4, max_steps=4, checkpoint_every=2, cache_features="disk", progress=False, lr=1e-3))
    heads = {name: tensor.detach().contiguous() for name, tensor in result.model.heads.state_dict().items()}
    save_file(heads, str(Path(out) / f"rank{PartialState().process_index}.safetensors"))
