"""Rebuild the MNIST subset shipped in mixsearch/bundled/mnist/ from the full MNIST files.

    python bench/make_bundled_mnist.py SOURCE_DIR [--out mixsearch/bundled/mnist]

(with mixsearch installed, e.g. `pip install -e .`, or PYTHONPATH=. from the project root)

SOURCE_DIR holds the four original IDX files (gzipped or not). The script refuses files whose
content differs from the published MNIST (md5 of the decompressed files), so the README's
provenance claim stays true. Output is byte-for-byte reproducible (gzip without timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from mixsearch.data import BUNDLED_MNIST_TEST, BUNDLED_MNIST_TRAIN, MNIST_FILES, encode_idx, read_idx, write_idx

# md5 of the decompressed files of the original MNIST distribution.
ORIGINAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

README = """\
# Bundled MNIST subset

A small part of the MNIST database of handwritten digits (Yann LeCun, Corinna Cortes,
Christopher J. C. Burges), shipped so that `mixsearch` runs offline and in tests without a download.

- training: the first {train:,} images and labels of the 60,000 MNIST training images, in order;
- test: the first {test:,} images and labels of the 10,000 MNIST test images, in order.

The files are in MNIST's own IDX format, gzip -9 compressed; the records are unchanged, only the
count in the header differs from the originals. Regenerate them with
`python bench/make_bundled_mnist.py <folder with the full MNIST files>`.

License: Creative Commons Attribution-Share Alike 3.0 (CC BY-SA 3.0), as the MNIST database.

| file | decompressed md5 |
| --- | --- |
{table}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the four full MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "mixsearch/bundled/mnist")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    counts = {"train": BUNDLED_MNIST_TRAIN, "test": BUNDLED_MNIST_TEST}
    rows = []
    for (split, _kind), name in MNIST_FILES.items():
        source = next((p for p in (args.source / name, args.source / f"{name}.gz") if p.is_file()), None)
        if source is None:
            sys.exit(f"{args.source}: no {name} or {name}.gz")
        full = read_idx(source)
        if hashlib.md5(encode_idx(full)).hexdigest() != ORIGINAL_MD5[name]:
            sys.exit(f"{source}: content differs from the original MNIST file")
        subset = full[: counts[split]]
        write_idx(args.out / f"{name}.gz", subset)
        rows.append(f"| {name}.gz | {hashlib.md5(encode_idx(subset)).hexdigest()} |")
    (args.out / "README.md").write_text(README.format(train=counts["train"], test=counts["test"], table="\n".join(rows)))
    total = sum(p.stat().st_size for p in args.out.glob("*.gz"))
    print(f"wrote {args.out} ({total:,} bytes of IDX files)")


if __name__ == "__main__":
    main()
