"""Cost of the masks: the one-layer masked Transformer against fairseq's dense Transformer.

    python -m one_layer_lottery.bench [--arch one_layer_transformer_iwslt_de_en] [--dims 256 512]
                                      [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--max-tokens 4096]
                                      [--model-flags "--mask-coats 3"]

Measured at each ``--dims`` embedding size in turn (the FFN scaled with it, heads and layers as in
``--arch``): 256 is the shape of the Multi30k studies, 512 the iwslt shape. Both models have the
same dimensions and layer counts and see the same batches in the same process (``--model-flags``
adds options of the one-layer model, a method beyond the paper for example); they take turns
(which one goes first alternates), and each ratio is taken within one repetition, so that slow
drifts of the machine cancel out. Printed as ratios masked/dense, the median of the per-repetition
ratios after warm-up with their lowest and highest (times: medians):
  1. training step (forward + backward + optimizer step), with the minor page faults of each step
  2. all masks of one step, ours against a naive edge-popup (clone, full sort, scatter)
  3. beam-5 generation through fairseq's SequenceGenerator (fixed output length)
  4. peak memory of a training step: tensor bytes held at once beyond the model and what was
     live before the step (measured on a step of its own before the warm-up, fresh optimizer state
     included)
"""
import argparse
import json
import os
import shlex
import statistics
import tempfile
import time
import warnings

# Kineto (the profiler behind the CPU memory measure) logs every start and stop at its default level.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
import torch  # noqa: E402  (after the variable above)

from .atomic import atomic_output, check_output  # noqa: E402
from .console import quiet_logging, tool_errors  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SRC_VOCAB, TGT_VOCAB = 8848, 6632  # IWSLT14 de-en dictionaries (fairseq recipe)


def write_dictionaries(d):
    """Dictionaries of the IWSLT14 sizes in folder ``d``: all that building the models needs."""
    for lang, size in (("de", SRC_VOCAB), ("en", TGT_VOCAB)):
        with open(os.path.join(d, f"dict.{lang}.txt"), "w") as f:
            f.writelines(f"w{i} {size - i}\n" for i in range(size - 4))


def arch_shape(arch, embed_dim=None):
    """(embed dim, FFN dim, heads, layers) of ``arch``, at ``embed_dim`` with the FFN scaled alike."""
    from .models.one_layer_transformer import ARCHITECTURES

    embed, ffn, heads, layers, _ = ARCHITECTURES[arch]
    if embed_dim is None:
        return embed, ffn, heads, layers
    return embed_dim, embed_dim * ffn // embed, heads, layers


class ModelFlagsError(ValueError):
    """An option of --model-flags that fairseq-train's parser refuses."""


def _refuse(message):
    raise ModelFlagsError(message)


def build(which, arch, data_dir, embed_dim=None, model_flags=()):
    """(model, task): the masked ``arch`` (at ``embed_dim``, with ``model_flags``) or fairseq's dense
    ``transformer`` of the same shape, built through fairseq's argument parsing as fairseq-train does."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    embed, ffn, heads, layers = arch_shape(arch, embed_dim)
    shape = ["--encoder-embed-dim", embed, "--encoder-ffn-embed-dim", ffn, "--encoder-attention-heads", heads,
             "--encoder-layers", layers, "--decoder-embed-dim", embed, "--decoder-ffn-embed-dim", ffn,
             "--decoder-attention-heads", heads, "--decoder-layers", layers,
             "--share-decoder-input-output-embed", "--dropout", "0.1"]
    parser = options.get_training_parser()
    parser.error = _refuse  # a bad --model-flags: one line from bench's own parser, not fairseq-train's usage
    args = options.parse_args_and_arch(
        parser, [data_dir, "--source-lang", "de", "--target-lang", "en",
                 "--user-dir", os.path.dirname(os.path.abspath(__file__)),
                 "--arch", arch if which == "masked" else "transformer", *map(str, shape),
                 *(model_flags if which == "masked" else ())])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model), task


def make_batches(n, max_tokens, seed=0, src_len=26, tgt_len=28):
    g = torch.Generator().manual_seed(seed)
    bsz = max(1, max_tokens // tgt_len)
    batches = []
    for _ in range(n):
        src = torch.randint(4, SRC_VOCAB, (bsz, src_len), generator=g)
        src[:, -1] = 2
        tgt = torch.randint(4, TGT_VOCAB, (bsz, tgt_len), generator=g)
        prev = torch.cat([torch.full((bsz, 1), 2), tgt[:, :-1]], dim=1)
        batches.append((src, torch.full((bsz,), src_len), prev, tgt))
    return batches


class CpuRuntime:
    """Timing and memory accounting for models on the CPU."""

    def __init__(self):
        self.device = torch.device("cpu")

    def synchronize(self):
        pass  # CPU work is done when the call returns

    def device_name(self):
        return None

    def peak_bytes(self, fn):
        """Peak bytes of tensors that ``fn()`` holds at once, beyond those live when it starts:
        the profiler's allocation events (every allocation and free, in time order), summed."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        if not events:
            raise RuntimeError("the profiler recorded no allocations: cannot measure peak memory")
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        return peak


class CudaRuntime:
    """Timing and memory accounting for models on a CUDA device: kernels run asynchronously (wait
    for them before reading a clock) and the caching allocator keeps the peak statistics.

    ``cuda`` is the ``torch.cuda`` module and ``device`` where the tensors go; tests pass a
    stand-in and the CPU to run this code path without a GPU.
    """

    def __init__(self, device=None, cuda=torch.cuda):
        self.device = torch.device("cuda") if device is None else torch.device(device)
        self.cuda = cuda

    def synchronize(self):
        self.cuda.synchronize()

    def device_name(self):
        return self.cuda.get_device_name()

    def peak_bytes(self, fn):
        """Peak bytes allocated while ``fn()`` runs, beyond what was allocated when it started."""
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()
        base = self.cuda.memory_allocated()
        fn()
        self.cuda.synchronize()
        return self.cuda.max_memory_allocated() - base


def runtime_for(device) -> "CpuRuntime | CudaRuntime":
    device = torch.device(device)
    if device.type == "cuda":
        return CudaRuntime(device)
    if device.type == "cpu":
        return CpuRuntime()
    raise ValueError(f"--device must be cpu or cuda, got {device.type!r}")


def train_step(model, optimizer, batch, device, dtype):
    src, lengths, prev, tgt = (t.to(device) for t in batch)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits, _ = model(src, lengths, prev)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1))
    loss.backward()
    optimizer.step()


def timed(fn, runtime):
    runtime.synchronize()
    start = time.perf_counter()
    fn()
    runtime.synchronize()
    return time.perf_counter() - start


def minor_faults():
    """Minor page faults of this process so far (memory the kernel hands it, zeroed, on first touch;
    on CPU the cost of tensors that are freed and made again every step), or None where they are not counted."""
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def all_masked(model):
    from .masking import MaskedWeight

    return [m for m in model.modules() if isinstance(m, MaskedWeight) and m.is_masked]


def naive_masks(score_tensors, prune_ratio):
    from .masking import naive_edge_popup_mask

    return [naive_edge_popup_mask(s, prune_ratio) for s in score_tensors]


def generation(model, task, src, device, out_len):
    from fairseq.sequence_generator import SequenceGenerator

    gen = SequenceGenerator([model], task.target_dictionary, beam_size=5, max_len_a=0, max_len_b=out_len,
                            min_len=out_len)
    sample = {"net_input": {"src_tokens": src.to(device), "src_lengths": torch.full((src.size(0),), src.size(1),
                                                                                    device=device)}}
    return lambda: gen.generate([model], sample)


def step_peak_bytes(fn, device):
    """Peak bytes of tensors that ``fn()`` holds at once, beyond those live when it starts.

    CUDA: the caching allocator's statistics. CPU: the profiler's allocation events
    (every tensor allocation and free, in time order), summed to the highest point.
    """
    return runtime_for(device).peak_bytes(fn)


def model_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def paired(times):
    """(median of the per-repetition ratios masked/dense, median time of each model)."""
    ratio = statistics.median(pair_ratios(times))
    return ratio, {k: statistics.median(v) for k, v in times.items()}


def pair_ratios(times):
    return [m / d for m, d in zip(times["masked"], times["dense"])]


def spread(times):
    """(lowest, highest) of the per-repetition ratios masked/dense."""
    ratios = pair_ratios(times)
    return min(ratios), max(ratios)


def check_args(args):
    if args.warmup < 0:
        raise ValueError(f"--warmup must be at least 0, got {args.warmup}")
    if args.steps < 1 or args.gen_reps < 1:
        raise ValueError("--steps and --gen-reps must be at least 1: each ratio is a median over repetitions")
    heads = arch_shape(args.arch)[2]
    for dim in getattr(args, "dims", ()):
        if dim < heads or dim % heads:
            raise ValueError(f"--dims {dim}: an embedding size must be a positive multiple of the {heads} heads")


def run(args, runtime=None):
    """The measurements as a dict. ``runtime`` (default: the one of ``args.device``) decides where
    the tensors go and how time and memory are read."""
    check_args(args)
    runtime = runtime_for(args.device) if runtime is None else runtime
    device = runtime.device
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    embed_dim = getattr(args, "embed_dim", None)
    model_flags = shlex.split(getattr(args, "model_flags", None) or "")
    with tempfile.TemporaryDirectory(prefix="olt-bench-") as data_dir:  # the task reads them once, at set-up
        write_dictionaries(data_dir)
        masked, task = build("masked", args.arch, data_dir, embed_dim, model_flags)
        dense, _ = build("dense", args.arch, data_dir, embed_dim)
    results = {"arch": args.arch, "model_flags": model_flags, "shape": arch_shape(args.arch, embed_dim),
               "device": args.device,
               "dtype": args.dtype, "max_tokens": args.max_tokens, "threads": torch.get_num_threads()}
    name = runtime.device_name()
    if name is not None:
        results["gpu"] = name

    # 1. training step; before the warm-up steps, one step whose peak memory is measured (the
    # profiler that counts its allocations slows it and unsettles the next ones)
    profiled = 0 if args.skip_memory else 1
    batches = make_batches(profiled + args.warmup + args.steps, args.max_tokens)
    times, faults = {"masked": [], "dense": []}, {"masked": [], "dense": []}
    for name, model in (("masked", masked), ("dense", dense)):
        model.to(device).train()
        model.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    peaks = {}
    pair = (("masked", masked), ("dense", dense))
    for i, batch in enumerate(batches):
        for name, model in pair if i % 2 == 0 else pair[::-1]:  # alternate who runs first
            step = lambda: train_step(model, model.optimizer, batch, device, dtype)  # noqa: E731
            if i < profiled:
                peaks[name] = runtime.peak_bytes(step)
            elif i >= profiled + args.warmup:
                before = minor_faults()
                times[name].append(timed(step, runtime))
                if before is not None:
                    faults[name].append(minor_faults() - before)
            else:
                step()
    results["train_step_ratio"], results["train_step_s"] = paired(times)
    results["train_step_spread"] = spread(times)
    results["train_step_all_s"] = times
    if faults["masked"]:
        results["train_step_minor_faults"] = faults

    # 2. mask computation: all masks of one step, ours vs the naive sort
    layers = all_masked(masked)
    scores = [m.score_tensor.detach() for m in layers]
    ratio = layers[0].mask_config.prune_ratio
    ours, naive = [], []
    our_masks = lambda: [m.mask() for m in layers]  # noqa: E731
    timed(our_masks, runtime)  # warm-up (the naive sort needs none)
    for _ in range(args.mask_reps):
        ours.append(timed(our_masks, runtime))
        naive.append(timed(lambda: naive_masks(scores, ratio), runtime))
    mask_t = {"ours": statistics.median(ours), "naive": statistics.median(naive)}
    results["mask_s"] = mask_t
    results["mask_speedup"] = mask_t["naive"] / mask_t["ours"]
    results["mask_elements"] = sum(s.numel() for s in scores)

    # 3. generation, beam 5, fixed output length
    src = make_batches(1, args.gen_sentences * 20, seed=1, src_len=20)[0][0]
    gen_t = {"masked": [], "dense": []}
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for model in (masked, dense):
            model.eval()
        for i in range(args.gen_reps + 1):
            for name, model in pair if i % 2 == 0 else pair[::-1]:
                t = timed(generation(model, task, src, device, args.gen_len), runtime)
                if i > 0:
                    gen_t[name].append(t)
    results["generate_ratio"], results["generate_s"] = paired(gen_t)
    results["generate_spread"] = spread(gen_t)
    results["generate_all_s"] = gen_t

    # 4. peak memory of a training step
    if peaks:
        results["peak_memory_bytes"] = peaks
        results["peak_memory_ratio"] = peaks["masked"] / peaks["dense"]
        results["model_bytes"] = {"masked": model_bytes(masked), "dense": model_bytes(dense)}
    return results


def report(r):
    """The printed lines of one shape's results."""
    embed, ffn, heads, layers = r["shape"]
    flags = f" flags='{' '.join(r['model_flags'])}'" if r.get("model_flags") else ""
    lines = [f"arch={r['arch']}{flags} shape={embed}/{ffn}/{heads},{layers}+{layers} device={r['device']} dtype={r['dtype']} "
             f"max_tokens={r['max_tokens']} threads={r['threads']}" + (f" gpu={r['gpu']}" if "gpu" in r else "")]
    for name, key in (("train step  ", "train_step"), ("generation  ", "generate")):
        low, high = r[f"{key}_spread"]
        n = len(r[f"{key}_all_s"]["masked"])
        faults = r.get("train_step_minor_faults") if key == "train_step" else None
        per_step = "" if not faults else (f"; page faults per step {statistics.median(faults['masked']):,.0f} / "
                                          f"{statistics.median(faults['dense']):,.0f}")
        lines.append(f"{name} masked/dense = {r[f'{key}_ratio']:.3f}  (min {low:.3f}, max {high:.3f} over {n} pairs; "
                     f"{r[f'{key}_s']['masked']:.3f} s / {r[f'{key}_s']['dense']:.3f} s{per_step})")
    lines.insert(2, f"mask compute naive/ours   = {r['mask_speedup']:.2f}x  "
                    f"({r['mask_s']['naive']:.3f} s / {r['mask_s']['ours']:.3f} s, {r['mask_elements']:,} scores)")
    if "peak_memory_ratio" in r:
        p, mb = r["peak_memory_bytes"], r["model_bytes"]
        lines.append(f"peak memory  masked/dense = {r['peak_memory_ratio']:.3f}  "
                     f"({p['masked'] / 2**20:.0f} MiB / {p['dense'] / 2**20:.0f} MiB; the models themselves: "
                     f"{mb['masked'] / 2**20:.0f} MiB / {mb['dense'] / 2**20:.0f} MiB)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="masked vs dense Transformer cost, as ratios")
    parser.add_argument("--arch", default="one_layer_transformer_iwslt_de_en")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512],
                        help="embedding sizes to measure, one after the other (the FFN scales alike)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--model-flags", default="",
                        help="options of the one-layer model, as on fairseq-train's command line (quoted)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps before the timed ones")
    parser.add_argument("--mask-reps", type=int, default=1)
    parser.add_argument("--gen-reps", type=int, default=5)
    parser.add_argument("--gen-sentences", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=20)
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--json", help="also write the results to this file: {\"shapes\": [one dict per --dims]}")
    args = parser.parse_args(argv)
    quiet_logging()
    # fairseq builds its configs through Hydra APIs that Hydra itself marks deprecated: not ours to act on.
    warnings.filterwarnings("ignore", message=r"(?s).*(hydra|version_base)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        check_args(args)
    except ValueError as e:
        parser.error(str(e))
    with tool_errors("bench"):
        if args.json:
            check_output(args.json)  # before minutes of measuring
        shapes = []
        for dim in args.dims:
            try:
                r = run(argparse.Namespace(**vars(args), embed_dim=dim))
            except ModelFlagsError as e:
                parser.error(f"--model-flags: {e}")
            print("\n".join(report(r)), flush=True)
            shapes.append(r)
        if args.json:
            with atomic_output(args.json) as tmp, open(tmp, "w") as f:
                json.dump({"shapes": shapes}, f, indent=2)


if __name__ == "__main__":
    main()
