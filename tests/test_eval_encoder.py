"""Features, NN and the whole suite on a tiny timm ViT and a slice of the embedded CIFAR-10 images."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from torch.utils.data import Dataset

from mimkit.config import DataConfig
from mimkit.data import ImageDataset, eval_transform, load_splits
from mimkit.eval import NN_POOLING, Pooling, extract_features, nn_accuracy, patch_tokens, run_suite
from mimkit.eval.features import native_size
from mimkit.eval.fewshot import FewShotConfig
from mimkit.eval.knn import nn_loo_accuracy
from mimkit.eval.linear import LinearProbeConfig
from mimkit.eval.suite import SuiteConfig


def tiny_vit(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kw})


@pytest.fixture(scope="module")
def splits():
    return load_splits(DataConfig(source="embedded"))


def image_slice(splits, split: str, n: int) -> ImageDataset:
    """n images of a split in a shuffled order (the embedded splits are sorted by class)."""
    hf = splits.data[split].shuffle(seed=0).select(range(n))
    return ImageDataset(hf, splits.image_column, splits.label_column, eval_transform(32, DataConfig()))


class WithHoles(Dataset):
    """Every 5th sample undecodable (None), as ImageDataset returns for a corrupt file."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return None if i % 5 == 2 else self.ds[i]


def test_features_match_timm_forward_features(splits):
    vit = tiny_vit().eval()
    ds = image_slice(splits, "test", 12)
    poolings = [Pooling("cls", norm=True), Pooling("mean", norm=True), Pooling("mean"), Pooling("topk_mean", k=3)]
    feats = extract_features(vit, ds, poolings, batch_size=5, amp=False)  # fp32, to compare exactly (amp: bf16 where native)
    images = torch.stack([ds[i][0] for i in range(12)])
    with torch.no_grad():
        post = vit.forward_features(images)  # (12, 1 + 16, 32)
        x = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(images))))  # (12, 17, 32) before the final norm
    torch.testing.assert_close(feats[Pooling("cls", norm=True)], post[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[Pooling("mean", norm=True)], post[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[Pooling("mean")], x[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[Pooling("topk_mean", k=3)], x[:, 1:].topk(3, dim=1).values.mean(1), rtol=1e-5, atol=1e-5)
    assert feats.labels.tolist() == [ds[i][1] for i in range(12)]
    assert patch_tokens(vit, images).shape == (12, 16, 32)


def test_undecodable_images_are_left_out_and_rows_stay_aligned(splits):
    vit = tiny_vit()
    full = image_slice(splits, "test", 20)
    holes = WithHoles(full)
    feats = extract_features(vit, holes, [NN_POOLING], batch_size=6, patch_similarity=True)
    keep = [i for i in range(20) if i % 5 != 2]
    whole = extract_features(vit, full, [NN_POOLING], batch_size=6, patch_similarity=True)
    assert feats.skipped == 4 and len(feats) == 16
    torch.testing.assert_close(feats[NN_POOLING], whole[NN_POOLING][keep])
    assert feats.labels.tolist() == whole.labels[keep].tolist()
    assert feats.patch_sim[False].shape == (16,)


def test_model_mode_and_device_are_restored(splits):
    vit = tiny_vit().train()
    extract_features(vit, image_slice(splits, "test", 4), NN_POOLING)
    assert vit.training


def test_wrong_image_size_is_named(splits):
    vit = tiny_vit(img_size=16)
    with pytest.raises(ValueError, match=r"expected \(B, C, 16, 16\)"):
        extract_features(vit, image_slice(splits, "test", 2), NN_POOLING)
    assert native_size(vit) == 16


def test_nn_accuracy_is_the_leave_one_out_on_prenorm_mean(splits):
    vit = tiny_vit()
    ds = image_slice(splits, "test", 64)
    acc = nn_accuracy(vit, ds, batch_size=16)
    feats = extract_features(vit, ds, NN_POOLING)
    assert acc == nn_loo_accuracy(feats[NN_POOLING], feats.labels)
    assert 0.0 <= acc <= 100.0


def test_accelerator_path_gives_the_same_rows(splits):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    vit = tiny_vit()
    ds = WithHoles(image_slice(splits, "test", 23))
    try:
        acc = Accelerator(cpu=True)
        with_acc = extract_features(vit, ds, NN_POOLING, batch_size=4, accelerator=acc)
        assert nn_accuracy(vit, ds, batch_size=4, accelerator=acc) == nn_loo_accuracy(with_acc[NN_POOLING], with_acc.labels)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    plain = extract_features(vit, ds, NN_POOLING, batch_size=4)
    torch.testing.assert_close(with_acc[NN_POOLING], plain[NN_POOLING])
    assert with_acc.labels.tolist() == plain.labels.tolist() and with_acc.skipped == plain.skipped == 5


def test_run_suite_reports_every_protocol(splits):
    vit = tiny_vit()
    cfg = SuiteConfig(
        pooling=Pooling("cls", norm=True),
        batch_size=32,
        linear=LinearProbeConfig(epochs=2, batch_size=32, base_lrs=(0.1, 1.0)),
        fewshot=FewShotConfig(shots=2, iterations=5, seeds=(0, 1)),
    )
    out = run_suite(vit, image_slice(splits, "test", 40), image_slice(splits, "train", 64), cfg, progress=lambda m: None)
    for key in ("nn", "knn", "linear", "fewshot"):
        assert 0.0 <= out[key] <= 100.0, key
    assert -1.0 <= out["sim"] <= 1.0 and -1.0 <= out["sim_patches"] <= 1.0
    assert 1.0 <= out["rank"] <= 32.0
    assert len(out["fewshot_runs"]) == 2
    assert out["meta"]["sizes"] == {"eval": 40, "train": 64}
    assert out["meta"]["pooling"] == "cls/postnorm" and out["meta"]["nn_pooling"] == "mean/prenorm"
    only_nn = run_suite(vit, image_slice(splits, "test", 40), None, SuiteConfig(protocols=("nn",)), progress=lambda m: None)
    assert only_nn["nn"] == out["nn"] and only_nn["knn"] is None and only_nn["meta"]["sizes"]["train"] is None


MULTI = textwrap.dedent("""
    import json, sys, torch, timm
    from accelerate import Accelerator
    from mimkit.config import DataConfig
    from mimkit.data import ImageDataset, eval_transform, load_splits
    from mimkit.eval import NN_POOLING, extract_features, nn_accuracy

    class WithHoles(torch.utils.data.Dataset):
        def __init__(self, ds): self.ds = ds
        def __len__(self): return len(self.ds)
        def __getitem__(self, i): return None if i % 5 == 2 else self.ds[i]

    acc = Accelerator(cpu=True) if sys.argv[1] == "acc" else None
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    sp = load_splits(DataConfig())
    hf = sp.data["test"].shuffle(seed=0).select(range(37))
    ds = WithHoles(ImageDataset(hf, sp.image_column, sp.label_column, eval_transform(32, DataConfig())))
    f = extract_features(vit, ds, NN_POOLING, batch_size=4, accelerator=acc)
    nn = nn_accuracy(vit, ds, batch_size=4, accelerator=acc)
    if acc is None or acc.is_main_process:
        out = {"nn": nn, "labels": f.labels.tolist(), "x": f[NN_POOLING].tolist(), "skipped": f.skipped}
        json.dump(out, open(sys.argv[2], "w"))
""")


@pytest.mark.slow
def test_two_processes_gather_the_same_features_as_one(tmp_path, splits):
    script = tmp_path / "nn_mp.py"
    script.write_text(MULTI)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--num_machines", "1", str(script), "acc", str(tmp_path / "multi.json")]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "multi.json").read_text())
    vit = tiny_vit(seed=0)  # the same weights as the launched script's
    ds = WithHoles(ImageDataset(splits.data["test"].shuffle(seed=0).select(range(37)), splits.image_column, splits.label_column,
                                eval_transform(32, DataConfig())))
    one = extract_features(vit, ds, NN_POOLING, batch_size=4)
    assert two["labels"] == one.labels.tolist() and two["skipped"] == one.skipped == 7
    torch.testing.assert_close(torch.tensor(two["x"]), one[NN_POOLING], rtol=1e-5, atol=1e-5)
    assert two["nn"] == nn_loo_accuracy(one[NN_POOLING], one.labels)
