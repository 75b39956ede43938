"""The sem-seg evaluation loop: perfect model -> 100, shards sum to the single-process numbers."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from synthetic_seg import grey_of, make_ade20k
from torch import nn

from lda_bench.data.ade20k import ADE20KDataset
from lda_bench.data.segmentation_transforms import IMAGENET_MEAN, IMAGENET_STD, SegTestTransform
from lda_bench.evaluation.distributed import DistContext
from lda_bench.evaluation.sem_seg import accumulate_sem_seg, evaluate_sem_seg, shard_images

SIZE = (40, 56)  # (h, w); the transform below keeps it: factor min(56/56, 40/40) = 1
NO_RESIZE = SegTestTransform(scale=(56, 40))


class GreyOracle(nn.Module):
    """Reads the grey level back from the normalised input and picks the class painted with it."""

    def forward(self, img):
        grey = img[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        centres = torch.tensor([float(grey_of(k + 1)) for k in range(3)]).view(1, 3, 1, 1)  # reduced 0..2
        return -((grey - centres) ** 2)


def seeded_conv():
    torch.manual_seed(123)
    return nn.Conv2d(3, 4, 1)


def shard(total, rank, world):
    return shard_images(total, DistContext(rank, world))


def test_shard_images():
    assert shard(7, 0, 3) == [0, 3, 6]
    assert shard(7, 2, 3) == [2, 5]
    assert sorted(i for r in range(3) for i in shard(7, r, 3)) == list(range(7))


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_perfect_model_gives_100(tmp_path, mode):
    data = ADE20KDataset(make_ade20k(tmp_path, sizes=(SIZE,) * 3))
    seen = []
    m = evaluate_sem_seg(GreyOracle(), data, transform=NO_RESIZE, mode=mode, crop_size=(16, 24), stride=(10, 13),
                         progress=lambda done, total: seen.append((done, total)))
    assert (m["aAcc"], m["mIoU"], m["mAcc"]) == (100.0, 100.0, 100.0)
    assert m["num_images"] == 3 and seen == [(1, 3), (2, 3), (3, 3)]
    assert m["protocol"]["mode"] == mode


def test_limit(tmp_path):
    data = ADE20KDataset(make_ade20k(tmp_path, sizes=(SIZE,) * 3))
    assert evaluate_sem_seg(GreyOracle(), data, transform=NO_RESIZE, limit=2)["num_images"] == 2


def test_shard_counts_sum_to_the_whole(tmp_path):
    data = ADE20KDataset(make_ade20k(tmp_path))
    transform = SegTestTransform(scale=(64, 32))
    whole = accumulate_sem_seg(seeded_conv(), data, range(3), transform=transform)
    shards = [accumulate_sem_seg(seeded_conv(), data, shard(3, r, 2), transform=transform) for r in range(2)]
    assert torch.equal(shards[0].as_tensor() + shards[1].as_tensor(), whole.as_tensor())
    assert 0 < whole.compute()["mIoU"] < 100  # a random 1x1 conv: neither trivial nor perfect


def _worker(rank, world_size, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        metrics = evaluate_sem_seg(seeded_conv(), ADE20KDataset(root), transform=SegTestTransform(scale=(64, 32)))
        if rank == 0:
            torch.save({k: metrics[k] for k in ("aAcc", "mIoU", "mAcc", "num_images")}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    root = make_ade20k(tmp_path / "data", sizes=((40, 56), (48, 48), (36, 60)))
    single = evaluate_sem_seg(seeded_conv(), ADE20KDataset(root), transform=SegTestTransform(scale=(64, 32)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, port, root, out), nprocs=2, join=True)
    distributed = torch.load(out)
    assert distributed["num_images"] == 3
    for key in ("aAcc", "mIoU", "mAcc"):
        assert distributed[key] == single[key]  # integer counts summed: bit-identical
