import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mimkit.augment import DecodeForDevice, crop_resize_flip, finish_batch
from mimkit.config import DataConfig
from mimkit.data import collate, train_transform

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _normalize(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_growing_crops_are_bilinear_resizes_of_the_box_then_flip_and_normalise():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 20, 20), generator=g, dtype=torch.uint8)
    crops = torch.tensor([[2, 3, 8, 10, 0], [0, 0, 20, 20, 1], [5, 1, 12, 6, 1]], dtype=torch.float32)
    out = crop_resize_flip(images, crops, 24, MEAN, STD)  # every box is <= 24 px: plain bilinear
    x = images.float() / 255
    j = torch.arange(24) + 0.5
    for b, (top, left, h, w, flip) in enumerate(crops.int().tolist()):
        ref = F.interpolate(x[b : b + 1, :, top : top + h, left : left + w], size=(24, 24), mode="bilinear", align_corners=False)
        # output pixels whose bilinear source lies inside the box; nearer the edge, a crop-then-resize
        # clamps to the box while the batched crop blends in the neighbouring image pixels
        rows = ((j * h / 24 - 0.5) >= 0) & ((j * h / 24 - 0.5) <= h - 1)
        cols = ((j * w / 24 - 0.5) >= 0) & ((j * w / 24 - 0.5) <= w - 1)
        if flip:
            ref, cols = ref.flip(-1), cols.flip(0)
        inside = rows[:, None] & cols[None, :]
        assert inside.sum() > 200
        torch.testing.assert_close(out[b][:, inside], _normalize(ref)[0][:, inside], rtol=1e-4, atol=1e-4)


def test_shrinking_crops_average_like_an_antialiased_resize():
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    x[..., ::2] = 255  # one-pixel stripes: aliasing would show them, averaging gives grey
    out = crop_resize_flip(x, torch.tensor([[0, 0, 64, 64, 0]], dtype=torch.float32), 16, [0, 0, 0], [1, 1, 1])
    assert out.mean().item() == pytest.approx(0.5, abs=1e-3)
    assert out.std().item() < 0.01


def test_decode_half_draws_torchvision_style_boxes_and_collates():
    dec = DecodeForDevice(32, (0.2, 1.0), hflip=True)
    img = Image.new("RGB", (50, 30), (10, 20, 30))
    torch.manual_seed(0)
    samples = [dec(img) for _ in range(200)]
    x, crop = samples[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    crops = torch.stack([c for _, c in samples])
    area = crops[:, 2] * crops[:, 3] / 32**2
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1.0
    assert (crops[:, 0] + crops[:, 2] <= 32).all() and (crops[:, 1] + crops[:, 3] <= 32).all()
    assert 0.3 < crops[:, 4].mean() < 0.7  # flips about half the time
    batch = collate([(s, 1, 0) for s in samples[:4]])
    assert batch["images"].shape == (4, 3, 32, 32) and batch["crops"].shape == (4, 5)
    assert finish_batch(batch, 16, MEAN, STD).shape == (4, 3, 16, 16)


def test_config_switch_selects_the_decode_half():
    cfg = DataConfig(augment="device", decode_size=40)
    t = train_transform(32, cfg)
    assert isinstance(t, DecodeForDevice) and t.decode_size == 40
    assert isinstance(train_transform(32, DataConfig(augment="device")), DecodeForDevice)
    assert not isinstance(train_transform(32, DataConfig()), DecodeForDevice)


def test_training_with_device_augmentation_resumes_exactly(tmp_path):
    import shutil

    from .runs import TINY, losses, run_train

    args = [*TINY, "data.augment=device", "data.decode_size=32", "train.max_steps=4", "train.save_every=2", "train.log_every=1"]
    assert run_train(*args, "--output", str(tmp_path / "full")) == 0
    (tmp_path / "part" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", tmp_path / "part" / "checkpoints" / "step_00000002")
    assert run_train(*args, "--output", str(tmp_path / "part"), "--resume") == 0
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(part) == [3, 4]
    for step in (3, 4):
        assert part[step] == pytest.approx(full[step], rel=1e-5)


def _png_table(n: int, sizes=((20, 24),), corrupt=()):
    """A datasets table of ``n`` random PNGs (cycling through ``sizes``); rows in ``corrupt`` hold junk bytes."""
    import datasets
    import io

    g = torch.Generator().manual_seed(1)
    pngs = []
    for i in range(n):
        buf = io.BytesIO()
        h, w = sizes[i % len(sizes)]
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()).save(buf, "PNG")
        pngs.append({"bytes": b"not a png" if i in corrupt else buf.getvalue(), "path": None})
    hf = datasets.Dataset.from_dict({"image": pngs, "label": list(range(n))}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.Value("int64")}))
    return hf, pngs


def test_cpu_augmentation_gives_the_per_image_pipeline_values_and_leaves_the_global_rng_alone():
    import io

    from mimkit.data import ImageDataset, sample_seed
    from torchvision.transforms import v2 as T

    hf, pngs = _png_table(6)
    cfg = DataConfig(mean=MEAN, std=STD)
    ds = ImageDataset(hf, "image", "label", train_transform(16, cfg), seed=7, on_error="substitute")
    ds.set_epoch(3)
    before = torch.get_rng_state()
    batch = collate([ds[i] for i in range(6)])
    assert torch.equal(torch.get_rng_state(), before)
    assert batch["images"].dtype == torch.uint8  # a quarter of the bytes between processes
    got = finish_batch(batch, 16, MEAN, STD)

    # what every image went through before: one Compose ending in ToDtype + Normalize, under
    # fork_rng + torch.manual_seed of the sample's seed
    full = T.Compose([T.ToImage(), T.RandomResizedCrop(16, scale=tuple(cfg.crop_scale), interpolation=T.InterpolationMode.BICUBIC,
                                                       antialias=True), T.RandomHorizontalFlip(),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    want = []
    for i in range(6):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(7, 3, i))
            want.append(full(Image.open(io.BytesIO(pngs[i]["bytes"])).convert("RGB")))
    assert torch.equal(got, torch.stack(want))
    assert not torch.equal(got[0], got[1])


def test_decoded_cache_gives_the_same_samples_as_decoding_every_read():
    import io

    from torchvision.transforms.functional import pil_to_tensor

    from mimkit.data import ImageDataset

    hf, pngs = _png_table(6)
    tf = train_transform(16, DataConfig())
    fresh = ImageDataset(hf, "image", "label", tf, seed=7, on_error="substitute")
    cached = ImageDataset(hf, "image", "label", tf, seed=7, on_error="substitute", cache=True)
    assert cached.decoded.shape == (6, 3, 20, 24) and cached.decoded.dtype == torch.uint8  # one stacked tensor
    assert torch.equal(cached.decoded[4], pil_to_tensor(Image.open(io.BytesIO(pngs[4]["bytes"]))))
    for epoch in (0, 2):
        fresh.set_epoch(epoch), cached.set_epoch(epoch)
        a, b = collate([fresh[i] for i in range(6)]), collate([cached[i] for i in range(6)])
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    # the device-augmentation half takes the cached tensors too, with the same result
    dec = DecodeForDevice(20, (0.2, 1.0), hflip=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        from_pil = dec(Image.open(io.BytesIO(pngs[0]["bytes"])).resize((20, 20), Image.BICUBIC))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        from_tensor = dec(pil_to_tensor(Image.open(io.BytesIO(pngs[0]["bytes"])).resize((20, 20), Image.BICUBIC)))
    assert all(torch.equal(x, y) for x, y in zip(from_pil, from_tensor))
    assert dec(cached.decoded[0])[0].shape == (3, 20, 20)  # 20x24 resized to the decode size


def test_decoded_cache_keeps_mixed_sizes_and_substitutes_undecodable_images():
    from mimkit.data import ImageDataset

    hf, _ = _png_table(5, sizes=((20, 24), (18, 18)), corrupt={1})
    ds = ImageDataset(hf, "image", "label", lambda x: x, seed=0, on_error="substitute", cache=True)
    assert isinstance(ds.decoded, list) and ds.decoded[1] is None and ds.decoded[2].shape == (3, 20, 24)
    img, label, passed_over = ds[1]  # the next decodable row stands in, counted
    assert label == 2 and passed_over == 1 and torch.equal(img, ds.decoded[2])


def test_cache_auto_decides_by_the_estimated_decoded_size(monkeypatch):
    import datasets

    import mimkit.data as data

    hf, _ = _png_table(8)  # 8 x 3 x 20 x 24 = 11,520 bytes decoded
    assert data.decoded_bytes(hf.cast_column("image", datasets.Image(decode=False)), "image") == 11520

    def cached(setting) -> bool:
        return data.ImageDataset(hf, "image", "label", lambda x: x, cache=DataConfig(cache=setting).cache).decoded is not None

    monkeypatch.setattr(data, "CACHE_BYTES", 11520)
    assert cached("auto")
    monkeypatch.setattr(data, "CACHE_BYTES", 11519)
    assert not cached("auto")
    assert cached(True) and not cached(False)
