"""Writes the seed inputs of the fuzz corpora (fuzz/corpus/<target>/seed-*), standard library only.

    python3 fuzz/seeds.py        # from the repository root

The torch checkpoints and the MNIST-style pickle reuse tests/fixtures/import/make_fixtures.py (its
stdlib imitation of torch.save and of a Python 2 numpy pickle; numpy is stubbed here, the arrays
are tiny). The image seeds are CPython's own test images (Lib/test/imghdrdata, found under
~/.pyenv) plus PNG/BMP files written below. libFuzzer grows each corpus from these; the minimised
result is committed next to them (docs/fuzzing.md).
"""
import collections
import glob
import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import types
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "import")


def write(target, name, data, prefix="seed-"):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, prefix + name), "wb") as f:
        f.write(data)


# ---- make_fixtures.py with a stub numpy (it only needs shape, dtype.str and tobytes)
sys.dont_write_bytecode = True  # no __pycache__ in tests/fixtures
sys.modules["numpy"] = types.ModuleType("numpy")
sys.path.insert(0, FIXTURES)
import make_fixtures as mf  # noqa: E402


class Arr:
    def __init__(self, code, shape, values):
        self.shape, self.values = shape, values
        self.dtype = types.SimpleNamespace(str="<" + code)
        self.fmt = {"f4": "f", "i8": "q"}[code]

    def tobytes(self):
        return struct.pack("<%d%s" % (len(self.values), self.fmt), *self.values)


def tmp_file(fn, *args):
    os.makedirs(CORPUS, exist_ok=True)
    path = os.path.join(CORPUS, ".tmp")
    fn(*args, path)
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    return data


def torch_seeds():
    write("torch", "zip_small.pt", tmp_file(mf.save_zip, mf.small("", "0")))
    write("torch", "legacy_small.pt", tmp_file(mf.save_legacy, mf.small("", "0")))
    nested = {"epoch": 3, "state_dict": mf.small("module.", "0"), "optimizer": {"lr": 0.1}}
    write("torch", "zip_nested.pt", tmp_file(mf.save_zip, nested))
    write("torch", "legacy_two_dicts.pt", tmp_file(mf.save_legacy, {"model": mf.small("", "0"),
                                                                    "ema": mf.small("", "1")}))
    write("torch", "zip_basic.pt", tmp_file(mf.save_zip, mf.basic()))
    write("torch", "legacy_basic.pt", tmp_file(mf.save_legacy, mf.basic()))
    # The same zip with deflated members (torch writes them stored; zip tools may not).
    src = zipfile.ZipFile(os.path.join(FIXTURES, "zip_nested_module.pt"))
    path = os.path.join(CORPUS, ".tmp")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n in src.namelist():
            z.writestr(n, src.read(n))
    with open(path, "rb") as f:
        write("torch", "zip_deflated.pt", f.read())
    os.remove(path)


def pickle_seeds():
    splits = [(Arr("f4", (2, 3), [0.0, 0.25, 0.5, 0.75, 1.0, 0.125]), Arr("i8", (2,), [3, 7])),
              (Arr("f4", (1, 3), [0.5, 0.5, 0.5]), Arr("i8", (1,), [1])),
              (Arr("f4", (1, 3), [1.0, 0.0, 1.0]), Arr("i8", (1,), [9]))]
    py2 = mf.py2_mnist_pickle(splits)
    write("pickle", "mnist_py2.pkl", py2)
    write("pickle", "mnist_py2.pkl.gz", gzip.compress(py2, mtime=0))
    obj = {"a": 1, "b": [1.5, None, True, False], "c": (b"xy\x00", "\u00e9\u20ac", 2 ** 70, -3),
           "d": collections.OrderedDict([("k", {1, 2}), ("f", frozenset([3]))]),
           "e": bytearray(b"ba"), "big": -(2 ** 100), "n": 65535, "m": -129}
    for proto in range(6):
        write("pickle", "py3_proto%d.pkl" % proto, pickle.dumps(obj, protocol=proto))
    # Python 2 pickles (str = bytes, unicode, long, old-style INST) where pyenv has a Python 2.
    for py2bin in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python")))[:1]:
        code = ("import pickle,sys\nclass C: pass\nc=C(); c.x=[1L, u'\\xe9', 's', 1.5]\n"
                "for p in (0,1,2): open(sys.argv[1]+str(p),'wb').write(pickle.dumps(c,p))\n")
        out = os.path.join(CORPUS, ".py2")
        subprocess.run([py2bin, "-c", code, out], check=True)
        for p in range(3):
            with open(out + str(p), "rb") as f:
                write("pickle", "py2_inst_proto%d.pkl" % p, f.read())
            os.remove(out + str(p))
    # A torch state_dict's data.pkl (persistent ids, _rebuild_tensor_v2, BUILD of _metadata).
    with zipfile.ZipFile(os.path.join(FIXTURES, "zip_nested_module.pt")) as z:
        name = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        write("pickle", "torch_data.pkl", z.read(name))


def npy(descr, fortran, shape, data, version=1):
    h = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", shape)
    pre = 10 if version == 1 else 12
    h += " " * ((64 - (pre + len(h) + 1) % 64) % 64) + "\n"
    head = b"\x93NUMPY" + bytes([version, 0])
    head += struct.pack("<H" if version == 1 else "<I", len(h))
    return head + h.encode("latin1") + data


def numpy_seeds():
    write("numpy", "f4_c.npy", npy("<f4", False, "(2, 3)", struct.pack("<6f", *range(6))))
    write("numpy", "i4_fortran.npy", npy("<i4", True, "(2, 3)", struct.pack("<6i", *range(6))))
    write("numpy", "f8_big.npy", npy(">f8", False, "(2,)", struct.pack(">2d", 1.5, -2.0)))
    write("numpy", "bool.npy", npy("|b1", False, "(3,)", b"\x01\x00\x01"))
    write("numpy", "f2_scalar_v2.npy", npy("<f2", False, "()", struct.pack("<e", 0.5), 2))
    write("numpy", "u1_3d_v3.npy", npy("|u1", False, "(1, 2, 2)", b"\x00\x01\x02\xff", 3))
    write("numpy", "i8_empty.npy", npy("<i8", False, "(0, 4)", b""))
    for n in ("arrays.npz", "arrays_compressed.npz"):
        with open(os.path.join(FIXTURES, n), "rb") as f:
            write("numpy", n, f.read())


def safetensors(tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def safetensors_seeds():
    write("safetensors", "batch_u8_labels.safetensors", safetensors(
        {"images": ("U8", [2, 1, 2, 2], bytes(range(8))),
         "labels": ("I64", [2], struct.pack("<2q", 0, 3))},
        {"num_classes": "4", "class_names": json.dumps(["a", "b", "c", "d"])}))
    write("safetensors", "batch_f32.safetensors", safetensors(
        {"images": ("F32", [1, 3, 1, 2], struct.pack("<6f", 0, 0.2, 0.4, 0.6, 0.8, 1))}))
    write("safetensors", "state_dict.safetensors", safetensors(
        {"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
         "b": ("BF16", [2], b"\x80\x3f\x00\x40"),
         "n": ("I64", [], struct.pack("<q", 42)),
         "m": ("BOOL", [2], b"\x01\x00")}, {"format": "pt"}))


def png(width, height, color_type, bit_depth, rows, palette=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    raw = b"".join(b"\x00" + r for r in rows)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bmp8(width, height, pixels):
    row = (width + 3) // 4 * 4
    data = b"".join(bytes(pixels[y * width:(y + 1) * width]).ljust(row, b"\0")
                    for y in reversed(range(height)))
    pal = b"".join(bytes([i, i, i, 0]) for i in range(256))
    off = 14 + 40 + len(pal)
    return (b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, len(data), 0, 0, 256, 0)
            + pal + data)


def image_seeds():
    write("image_folder", "gray.png", png(3, 2, 0, 8, [b"\x00\x80\xff", b"\x10\x20\x30"]))
    write("image_folder", "rgb16.png", png(2, 1, 2, 16, [bytes(range(12))]))
    write("image_folder", "palette.png", png(2, 2, 3, 8, [b"\x00\x01", b"\x01\x00"],
                                             palette=b"\xff\x00\x00\x00\x00\xff"))
    write("image_folder", "gray.bmp", bmp8(3, 2, [0, 50, 100, 150, 200, 250]))
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/lib/python3*/test/"
                                                "imghdrdata")))
    for d in found[:1]:
        for n in ("python.png", "python.jpg", "python-raw.jpg", "python.bmp"):
            shutil.copy(os.path.join(d, n), os.path.join(CORPUS, "image_folder", "seed-" + n))


def csv_seeds():
    write("scores_csv", "scores.csv", b"model,attack,eps,label,score,clean_correct,adv_success\n"
          b"dnn,fgsm,0.03,1,0.9,1,1\ndnn,fgsm,0.03,0,0.1,1,\nbnn,clean,,0,-1.5e-3,0,\n"
          b"bnn,pgd,0.1,true,2,1,0\n")
    write("scores_csv", "quoted.csv", b'label,score,"model"\r\n0,1e300,"a,b"\r\n1,0.5,""\r\n')
    write("scores_csv", "classification.csv",
          b"model,n,top1,top5,nll,brier,ece\ndnn,100,0.9,0.99,0.3,0.1,0.02\n")
    write("scores_csv", "reliability.csv",
          b"model,bin,lo,hi,count,confidence,accuracy\nbnn,0,0.0,0.1,3,0.05,0.0\n")
    write("scores_csv", "mc_curve.csv", b"model,n_samples,top1,nll\nbnn,20,0.91,0.28\n")
    write("scores_csv", "detection.csv",
          b"subset,model,attack,eps,n_pos,n_neg,auroc,aupr_in,aupr_out,tpr_at_fpr_0.01,"
          b"tpr_at_fpr_0.05,tpr_at_fpr_0.10,tnr_at_tpr95,detection_accuracy,"
          b"detection_accuracy_at_fpr05,auroc_lo,auroc_hi\n"
          b"all,bnn,pgd,0.03,10,10,0.9,0.8,0.7,0.1,0.2,0.3,0.4,0.5,0.6,,\n")


def regress(target, name, data):
    write(target, name, data, prefix="regress-")


def regress_seeds():
    """One input per decoder bug fixed with the fuzzing work (docs/fuzzing.md), named regress-*:
    each panicked, overflowed the stack, hung or allocated without bound before its fix."""
    # A list containing itself: printing it recursed forever.
    regress("pickle", "cycle.pkl", b"\x80\x02]q\x00h\x00a.")
    # x0 = []; x(k+1) = [xk] * 16, 20 levels: 16^20 paths to print.
    dag = b"\x80\x02]q\x00" + (b"(" + b"h\x00" * 16 + b"lq\x00") * 20 + b"."
    regress("pickle", "shared_dag.pkl", dag)
    st = mf.Storage("FloatStorage", [1.0], "0")
    # Stride 0 repeating one float 2^40 times (4 TiB); a shape whose product wraps around.
    regress("torch", "expand_2p40.pt", tmp_file(mf.save_zip, mf.state_dict(
        [("w", mf.Tensor(st, 0, [2 ** 40], [0]))])))
    regress("torch", "shape_wraps.pt", tmp_file(mf.save_zip, mf.state_dict(
        [("w", mf.Tensor(st, 0, [2 ** 33, 2 ** 33], [0, 0]))])))
    # A legacy storage whose byte count, added to its offset, wraps around usize.
    leg = bytearray(tmp_file(mf.save_legacy, mf.small("", "0")))
    at = leg.index(struct.pack("<q", 4) + struct.pack("<f", 0.25))
    leg[at:at + 8] = struct.pack("<Q", (2 ** 64 - 1) // 4)
    regress("torch", "legacy_size_wraps.pt", bytes(leg))
    # An npy shape whose element count wraps around usize.
    regress("numpy", "shape_wraps.npy", npy("<f4", False, "(1099511627776, 1099511627776, 16)", b""))
    # A label of i64::MAX: 1 + the largest label (the class count) overflowed.
    regress("safetensors", "label_i64_max.safetensors", safetensors(
        {"images": ("U8", [1, 1, 1, 1], b"\x00"),
         "labels": ("I64", [1], struct.pack("<q", 2 ** 63 - 1))}))


if __name__ == "__main__":
    torch_seeds()
    pickle_seeds()
    numpy_seeds()
    safetensors_seeds()
    image_seeds()
    csv_seeds()
    regress_seeds()
