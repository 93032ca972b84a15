"""Code that runs inside vLLM: a per-tenant statistical watermark (see README.md).

    greenlist.py  the keyed green list (reference and vectorised forms, bit-identical)
    processor.py  GreenListLogitsProcessor for `vllm serve --logits-processors`
    detector.py   z-score / exact binomial test across candidate keys, Bonferroni

Nothing here imports vLLM or torch until vLLM loads the processor class.
"""
