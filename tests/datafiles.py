"""Tiny files in the real on-disk formats, for the loaders' tests."""

from __future__ import annotations

import pathlib

import numpy as np


def cifar_records(n: int, classes: int, seed: int, label_bytes: int = 1):
  """Binary CIFAR records: label byte(s) then 3072 pixel bytes (R, G, B planes)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % classes
  pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
  if label_bytes == 2:  # CIFAR-100: coarse label, then fine label
    head = np.stack([labels // 5, labels], axis=1).astype(np.uint8)
  else:
    head = labels[:, None].astype(np.uint8)
  return np.concatenate([head, pixels], axis=1), labels, pixels


def write_cifar10(root: pathlib.Path, per_file: int = 20) -> pathlib.Path:
  folder = root / "cifar-10-batches-bin"
  folder.mkdir(parents=True, exist_ok=True)
  names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
  for i, name in enumerate(names):
    records, _, _ = cifar_records(per_file, 10, seed=i)
    records.tofile(folder / name)
  return folder


def write_cifar100(root: pathlib.Path, n: int = 200) -> pathlib.Path:
  folder = root / "cifar-100-binary"
  folder.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(("train.bin", "test.bin")):
    records, _, _ = cifar_records(n, 100, seed=10 + i, label_bytes=2)
    records.tofile(folder / name)
  return folder


def _sentences(n: int, seed: int) -> str:
  rng = np.random.default_rng(seed)
  words = [f"w{i}" for i in range(40)] + ["the", "of", "<unk>"]
  return "\n".join(" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(n)) + "\n"


def write_wikitext2(root: pathlib.Path) -> pathlib.Path:
  folder = root / "wikitext-2"
  folder.mkdir(parents=True, exist_ok=True)
  for i, split in enumerate(("train", "valid", "test")):
    text = " = Title = \n\n" + _sentences({"train": 400}.get(split, 60), i)
    (folder / f"wiki.{split}.tokens").write_text(text)
  return folder


def write_ptb(root: pathlib.Path) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  for i, split in enumerate(("train", "valid", "test")):
    (root / f"ptb.{split}.txt").write_text(_sentences({"train": 400}.get(split, 60), 10 + i))
  return root
