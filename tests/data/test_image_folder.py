"""image_folder_source: formats, modes, sizes, layouts, labels, bad files."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtn.data.image_folder import MAX_PIXELS, image_folder_source, path_fraction
from dtn.errors import DataError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def solid(size=(8, 8), color=(200, 30, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height (valid CRCs) followed by a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def mixed_folder(root: Path) -> Path:
    """Eight 8x8 images, one per format/mode, directly in root (no labels)."""
    save(solid(mode="L", color=100), root / "a_grey.png")
    save(solid(color=(200, 30, 30)), root / "b_rgb.jpg", quality=95)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((3, 3), (0, 255, 0, 255))
    save(rgba, root / "c_rgba.png")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 50] + [0] * 762)
    save(pal, root / "d_palette.png")
    pal_t = pal.copy()
    save(pal_t, root / "e_palette_transparent.png", transparency=1)
    save(Image.fromarray(np.full((8, 8), 0x8000, np.uint16)), root / "f_16bit.png")
    save(solid(mode="CMYK", color=(0, 255, 255, 0)), root / "g_cmyk.JPEG", quality=95)
    save(solid(color=(0, 0, 255)), root / "h_rgb.webp", lossless=True)
    save(solid(color=(10, 20, 30)), root / "i_rgb.BMP")
    (root / "notes.txt").write_text("not an image, ignored by extension")
    save(solid(), root / ".hidden.png")
    return root


def test_formats_and_modes_become_rgb(tmp_path):
    folder = mixed_folder(tmp_path / "imgs")
    split = image_folder_source(folder).load("all", Path())
    paths = split.extras["paths"]
    assert paths == sorted(paths) and len(paths) == 9 and ".hidden.png" not in paths
    assert split.images.shape == (9, 8, 8, 3) and split.images.dtype == np.uint8
    px = {p: split.images[i, 0, 0].astype(int) for i, p in enumerate(paths)}
    assert tuple(px["a_grey.png"]) == (100, 100, 100)
    assert np.abs(px["b_rgb.jpg"] - (200, 30, 30)).max() <= 8
    assert tuple(px["c_rgba.png"]) == (255, 255, 255), "transparent -> composited on white"
    assert tuple(split.images[paths.index("c_rgba.png"), 3, 3]) == (0, 255, 0)
    assert tuple(px["d_palette.png"]) == (10, 200, 50)
    assert tuple(px["e_palette_transparent.png"]) == (255, 255, 255)
    assert tuple(px["f_16bit.png"]) == (128, 128, 128)
    assert np.abs(px["g_cmyk.JPEG"] - (255, 0, 0)).max() <= 8
    assert tuple(px["h_rgb.webp"]) == (0, 0, 255)
    assert tuple(px["i_rgb.BMP"]) == (10, 20, 30)
    assert (split.labels == -1).all() and split.class_names == ()
    assert split.extras["skipped"] == []


def test_mode_l_gives_one_channel(tmp_path):
    folder = mixed_folder(tmp_path / "imgs")
    split = image_folder_source(folder, mode="L").load("all", Path())
    assert split.images.shape == (9, 8, 8, 1)
    paths = split.extras["paths"]
    assert split.images[paths.index("a_grey.png"), 0, 0, 0] == 100
    assert split.images[paths.index("c_rgba.png"), 0, 0, 0] == 255


def test_bad_mode_and_size_are_refused(tmp_path):
    mixed_folder(tmp_path)
    with pytest.raises(DataError, match="mode"):
        image_folder_source(tmp_path, mode="CMYK")
    with pytest.raises(DataError, match="size"):
        image_folder_source(tmp_path, size=0)


def test_mixed_sizes_resize_shorter_side_and_centre_crop(tmp_path):
    stripes = Image.new("RGB", (40, 10), (255, 0, 0))
    stripes.paste((0, 255, 0), (10, 0, 30, 10))
    stripes.paste((0, 0, 255), (30, 0, 40, 10))
    save(stripes, tmp_path / "wide.png")
    save(solid((30, 30), (50, 60, 70)), tmp_path / "square.png")
    save(solid((16, 40), (9, 9, 9)), tmp_path / "tall.png")
    default = image_folder_source(tmp_path).load("all", Path())
    assert default.images.shape == (3, 64, 64, 3), "mixed sizes and no size -> 64"
    split = image_folder_source(tmp_path, size=10).load("all", Path())
    assert split.images.shape == (3, 10, 10, 3)
    wide = split.images[split.extras["paths"].index("wide.png")]
    assert (wide == (0, 255, 0)).all(), "centre crop of a 40x10 image keeps the middle"
    assert (split.images[split.extras["paths"].index("square.png")] == (50, 60, 70)).all()


def test_uniform_size_is_kept_even_if_not_square(tmp_path):
    for i in range(3):
        save(solid((12, 8), (i, i, i)), tmp_path / f"{i}.png")
    split = image_folder_source(tmp_path).load("all", Path())
    assert split.images.shape == (3, 8, 12, 3)


def test_subfolder_labels_and_root_files(tmp_path):
    save(solid(), tmp_path / "zebra" / "1.png")
    save(solid(), tmp_path / "ant" / "deep" / "nested" / "2.png")
    save(solid(), tmp_path / "ant" / "3.jpg")
    save(solid(), tmp_path / "loose.png")
    (tmp_path / "empty_class").mkdir()
    split = image_folder_source(tmp_path).load("all", Path())
    assert split.class_names == ("ant", "zebra"), "only folders holding images are classes"
    labels = dict(zip(split.extras["paths"], split.labels.tolist()))
    assert labels == {"ant/3.jpg": 0, "ant/deep/nested/2.png": 0, "loose.png": -1, "zebra/1.png": 1}
    flat = image_folder_source(tmp_path, labels_from_subfolders=False).load("all", Path())
    assert (flat.labels == -1).all() and flat.class_names == ()


def test_flat_layout_hash_split_is_disjoint_and_stable(tmp_path):
    for i in range(60):
        save(solid((4, 4), (i, 0, 0)), tmp_path / f"c{i % 2}" / f"img{i:03d}.png")
    source = image_folder_source(tmp_path)
    assert source.splits == ("all", "train", "test")
    train, test, everything = (source.load(s, Path()) for s in ("train", "test", "all"))
    assert set(train.extras["paths"]).isdisjoint(test.extras["paths"])
    assert sorted(train.extras["paths"] + test.extras["paths"]) == everything.extras["paths"]
    assert 0 < len(test) < 20
    assert train.class_names == test.class_names == ("c0", "c1")
    for i in range(60, 90):
        save(solid((4, 4)), tmp_path / "c0" / f"img{i:03d}.png")
    bigger = image_folder_source(tmp_path).load("test", Path())
    assert set(test.extras["paths"]) <= set(bigger.extras["paths"]), "adding files moves no old file"


def test_flat_layout_with_an_empty_test_split(tmp_path):
    name = next(f"x{i}.png" for i in range(100) if path_fraction(f"x{i}.png") >= 0.1)
    save(solid(), tmp_path / name)
    source = image_folder_source(tmp_path)
    assert len(source.load("train", Path())) == 1
    with pytest.raises(DataError, match=f"no images .*{tmp_path.name}.*test"):
        source.load("test", Path())


def test_train_test_layout_shares_class_indices(tmp_path):
    save(solid(), tmp_path / "train" / "cat" / "1.png")
    save(solid(), tmp_path / "train" / "dog" / "2.png")
    save(solid(), tmp_path / "test" / "dog" / "3.png")
    source = image_folder_source(tmp_path)
    assert source.splits == ("train", "test")
    test = source.load("test", Path())
    assert test.class_names == ("cat", "dog") and test.labels.tolist() == [1]
    assert test.extras["paths"] == ["test/dog/3.png"]
    with pytest.raises(DataError, match="no split 'all'"):
        source.load("all", Path())


def test_cyclegan_layout_exposes_exactly_the_present_splits(tmp_path):
    for split, n in (("trainA", 3), ("trainB", 2), ("testA", 1)):
        for i in range(n):
            save(solid((6, 6), (i, 0, 0)), tmp_path / split / f"{i}.jpg")
    save(solid(), tmp_path / "train" / "ignored.png")
    source = image_folder_source(tmp_path, size=4)
    assert source.splits == ("trainA", "trainB", "testA")
    sizes = {s: len(source.load(s, Path())) for s in source.splits}
    assert sizes == {"trainA": 3, "trainB": 2, "testA": 1}
    b = source.load("trainB", Path())
    assert b.images.shape == (2, 4, 4, 3) and b.extras["paths"] == ["trainB/0.jpg", "trainB/1.jpg"]
    assert b.split == "trainB" and b.dataset == f"folder:{tmp_path}"


def write_bad_files(root: Path) -> dict[str, Path]:
    good = save(solid(), root / "good.png")
    zero = root / "zero.png"
    zero.write_bytes(b"")
    truncated = root / "truncated.png"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    save(noisy, truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])
    text = root / "text.jpg"
    text.write_text("this is not a jpeg")
    huge = png_with_header(root / "huge.png", 8000, 8000)        # 64 M pixels: over our 40 M limit
    bomb = png_with_header(root / "bomb.png", 20000, 20000)      # past PIL's own bomb error threshold
    return {"good": good, "zero": zero, "truncated": truncated, "text": text, "huge": huge, "bomb": bomb}


@pytest.mark.parametrize("bad, pattern", [
    ("zero", "empty file"),
    ("truncated", "truncated or corrupt"),
    ("text", "not an image"),
    ("huge", "exceeds the 40,000,000-pixel limit"),
    ("bomb", "decompression bomb"),
])
def test_bad_file_error_names_the_file(tmp_path, bad, pattern):
    files = write_bad_files(tmp_path / "all")
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "good.png").write_bytes(files["good"].read_bytes())
    (folder / files[bad].name).write_bytes(files[bad].read_bytes())
    with pytest.raises(DataError, match=pattern) as err:
        image_folder_source(folder).load("all", Path())
    assert str(folder / files[bad].name) in str(err.value) and "\n" not in str(err.value)


def test_skip_bad_counts_skipped_files(tmp_path):
    write_bad_files(tmp_path)
    split = image_folder_source(tmp_path, skip_bad=True).load("all", Path())
    assert split.extras["paths"] == ["good.png"] and len(split) == 1
    skipped = dict(split.extras["skipped"])
    assert sorted(skipped) == ["bomb.png", "huge.png", "text.jpg", "truncated.png", "zero.png"]
    assert "empty" in skipped["zero.png"]
    assert MAX_PIXELS == 40_000_000


def test_only_bad_files_with_skip_bad_is_an_error(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=f"no readable images in {tmp_path}"):
        image_folder_source(tmp_path, skip_bad=True).load("all", Path())


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"no images .* in {tmp_path}"):
        image_folder_source(tmp_path).load("all", Path())
    with pytest.raises(DataError, match="does not exist"):
        image_folder_source(tmp_path / "nope")


def test_loading_is_deterministic(tmp_path):
    for i in range(6):
        save(solid((5 + i, 9), (i * 20, 0, 0)), tmp_path / f"k{i % 3}" / f"{i}.png")
    a = image_folder_source(tmp_path, size=6).load("all", Path())
    b = image_folder_source(tmp_path, size=6).load("all", Path())
    np.testing.assert_array_equal(a.images, b.images)
    assert a.extras["paths"] == b.extras["paths"] and a.labels.tolist() == b.labels.tolist()


def test_check_lists_split_folders(tmp_path):
    save(solid(), tmp_path / "trainA" / "1.png")
    checks = image_folder_source(tmp_path).check(Path())
    assert [c.path for c in checks] == [tmp_path / "trainA"] and checks[0].ok


def test_registry_accepts_a_folder_path(tmp_path):
    pytest.importorskip("dtn.data.synth_digits", reason="synth_digits (registry member) not written yet")
    from dtn import data

    save(solid(), tmp_path / "a.png")
    assert data.get(str(tmp_path)).name == f"folder:{tmp_path}"
    assert len(data.load(f"folder:{tmp_path}", "all")) == 1
