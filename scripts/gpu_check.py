"""One-shot check of the project on a CUDA GPU (run by scripts/gpu_check.sh OUT_DIR).

Writes OUT_DIR/report.json and OUT_DIR/summary.txt:
  1. torch, CUDA and the GPU's name and memory;
  2. the tests marked ``gpu`` (CUDA selection = CPU selection, exactly k in fp16/bf16, masked attention
     in both attention paths, the eval mask cache, a checkpoint saved on CUDA loaded on CPU);
  3. ``python -m one_layer_lottery.bench --device cuda`` in fp16 and bf16 (masked/dense ratios);
  4. a 300-update fp16 training run on Multi30k (the binarized copy under shared/data, else the sample
     corpus), then fairseq-generate on its test set and the BLEU, with the peak GPU memory of training.
Without a GPU it says so, writes a report saying so, and exits 0. Every step has a time limit, within
a total budget (GPU_CHECK_BUDGET_S, default 450 s), so the whole check ends in under 8 minutes.

``--rehearse-on-cpu`` runs every step on the CPU with tiny sizes, to test this script where there is no
GPU; its figures mean nothing. ``--steps tests,bench`` runs only the steps named (tests, bench,
training), for example to repeat one that failed; the report and summary hold those steps alone.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER_DIR = str(ROOT / "one_layer_lottery")
TARGETS = {"train_step_ratio": 1.15, "generate_ratio": 1.03}  # masked/dense, at most
STEPS = ("tests", "bench", "training")

# fairseq-train in this process's interpreter, then the CUDA allocator's peaks as JSON in argv[1].
TRAIN_WITH_PEAK = """
import json, sys, torch
from fairseq_cli.train import cli_main
out = sys.argv[1]
sys.argv = ["fairseq-train"] + sys.argv[2:]
try:
    cli_main()
finally:
    if torch.cuda.is_available():
        with open(out, "w") as f:
            json.dump({"max_allocated_bytes": torch.cuda.max_memory_allocated(),
                       "max_reserved_bytes": torch.cuda.max_memory_reserved()}, f)
"""


class Budget:
    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def limit(self, wanted):
        return max(1, min(wanted, int(self.deadline - time.monotonic())))


def run(cmd, log, timeout, env=None):
    """(return code or 'timeout', seconds); stdout and stderr go to ``log``."""
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return code, round(time.monotonic() - start, 1)


def environment():
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.is_available()}
    if info["gpu"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_memory_bytes=props.total_memory,
                    compute_capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
    return info


def gpu_test_files():
    """The test files that mark tests ``gpu``; collecting only these spares importing the whole suite."""
    marked = [str(p) for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()]
    return marked or [str(ROOT / "tests")]


def gpu_tests(out, budget, rehearse):
    xml = out / "gpu-tests.xml"
    code, seconds = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                         "--junitxml", xml, *gpu_test_files()], out / "gpu-tests.log", budget.limit(240))
    result = {"exit": code, "seconds": seconds}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        result.update(counts)
        result["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                            if case.find("failure") is not None or case.find("error") is not None]
    # pytest exits 5 when every test was deselected: none marked gpu is a failure of this check too.
    result["ok"] = code == 0 and result.get("passed", 0) > 0 if not rehearse else code in (0, 5)
    return result


def bench(out, budget, dtype, rehearse):
    path = out / f"bench-{dtype}.json"
    sizes = (["--device", "cpu", "--dims", "16", "--max-tokens", "64", "--steps", "1", "--warmup", "1",
              "--gen-reps", "1", "--gen-sentences", "2", "--gen-len", "3", "--skip-memory"] if rehearse else
             ["--device", "cuda", "--dims", "512", "--steps", "20", "--warmup", "3", "--mask-reps", "5",
              "--gen-reps", "7"])
    code, seconds = run([sys.executable, "-m", "one_layer_lottery.bench", "--dtype", dtype, *sizes, "--json", path],
                        out / f"bench-{dtype}.log", budget.limit(150))
    result = {"exit": code, "seconds": seconds, "ok": code == 0 and path.exists()}
    if result["ok"]:
        r = json.loads(path.read_text())["shapes"][0]  # the one shape of --dims
        result.update({k: r[k] for k in ("train_step_ratio", "generate_ratio", "mask_speedup", "train_step_s",
                                          "generate_s", "peak_memory_ratio", "peak_memory_bytes") if k in r})
    return result


def shared_dir():
    for candidate in (ROOT.parent / "shared", ROOT / "shared"):
        if (candidate / "data" / "multi30k-bench-bin" / "dict.en.txt").exists():
            return candidate
    return None


def training(out, budget, rehearse):
    shared = None if rehearse else shared_dir()
    if shared is not None:
        data, corpus, bpe = shared / "data" / "multi30k-bench-bin", "multi30k", ["--remove-bpe", "sentencepiece"]
    else:
        data, corpus, bpe = out / "sample-bin", "sample", []
        sample = ROOT / "data" / "sample"
        code, _ = run([BIN / "fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--joined-dictionary",
                       "--trainpref", sample / "train", "--validpref", sample / "valid", "--testpref", sample / "test",
                       "--destdir", data, "--workers", "1"], out / "preprocess.log", budget.limit(120))
        if code != 0:
            return {"corpus": corpus, "ok": False, "exit": code, "step": "fairseq-preprocess"}
    shape = (["--encoder-embed-dim", 32, "--encoder-ffn-embed-dim", 64, "--encoder-layers", 2, "--decoder-layers", 2]
             if rehearse else
             ["--encoder-embed-dim", 256, "--encoder-ffn-embed-dim", 512, "--encoder-layers", 6, "--decoder-layers", 6])
    updates = 3 if rehearse else 300
    precision = ["--cpu"] if rehearse else ["--fp16"]
    ckpt = out / "checkpoints"
    peak = out / "train-peak.json"
    code, seconds = run(
        [sys.executable, "-c", TRAIN_WITH_PEAK, peak, data, "--user-dir", USER_DIR,
         "--arch", "one_layer_transformer_iwslt_de_en", *shape, "--encoder-attention-heads", 4,
         "--decoder-attention-heads", 4, "--share-all-embeddings", "--encoder-normalize-before",
         "--decoder-normalize-before", "--init", "signed_constant", "--prune-ratio", 0.5, "--dropout", 0.0,
         "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", 3e-3, "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", 100, "--warmup-init-lr", 1e-7, "--criterion", "label_smoothed_cross_entropy",
         "--label-smoothing", 0.1, "--max-tokens", 4096, "--max-update", updates, "--seed", 1, *precision,
         "--disable-validation", "--no-epoch-checkpoints", "--save-dir", ckpt, "--num-workers", 0,
         "--log-format", "simple", "--log-interval", 50],
        out / "train.log", budget.limit(180))
    result = {"corpus": corpus, "data": str(data), "updates": updates, "exit": code, "seconds": seconds,
              "ok": code == 0 and (ckpt / "checkpoint_last.pt").exists()}
    if peak.exists():
        result["peak_gpu_memory"] = json.loads(peak.read_text())
    if not result["ok"]:
        return result
    code, seconds = run([BIN / "fairseq-generate", data, "--user-dir", USER_DIR, "--path", ckpt / "checkpoint_last.pt",
                         "--gen-subset", "test", "--beam", 5, "--batch-size", 128, "--required-batch-size-multiple", 1,
                         *bpe, *(["--cpu", "--max-len-a", 0, "--max-len-b", 8] if rehearse else ["--fp16"])],
                        out / "generate.log", budget.limit(120))
    text = (out / "generate.log").read_text(errors="replace")
    bleu = re.search(r"BLEU4? = ([0-9.]+)", text)
    result["generate"] = {"exit": code, "seconds": seconds, "bleu": float(bleu.group(1)) if bleu else None,
                          "sentences": len(re.findall(r"^H-\d+\t", text, flags=re.M))}
    result["ok"] = code == 0 and bleu is not None
    return result


def targets(report):
    """Each target figure: (value, limit, met) ; None where it was not measured."""
    found = {}
    for dtype in ("fp16", "bf16"):
        b = report.get(f"bench_{dtype}", {})
        for key, limit in TARGETS.items():
            value = b.get(key)
            found[f"{key} {dtype}"] = None if value is None else {"value": value, "limit": limit,
                                                                  "met": value <= limit}
    return found


def summary(report):
    env = report["environment"]
    lines = [f"gpu_check ({'CPU REHEARSAL: the figures mean nothing' if report['rehearsal'] else 'GPU'})",
             f"torch {env['torch']}, CUDA {env['cuda']}, GPU: {env.get('gpu_name', 'none')}"
             + (f" ({env['gpu_memory_bytes'] / 2**30:.0f} GiB)" if "gpu_memory_bytes" in env else "")]
    t = report.get("gpu_tests")
    if t is not None:
        lines.append(f"tests marked gpu: {t.get('passed', '?')} passed, {t.get('failures', 0) + t.get('errors', 0)} "
                     f"failed, {t.get('skipped', 0)} skipped ({t['seconds']} s)"
                     + "".join(f"\n  FAILED {n}" for n in t.get("failed", [])))
    for dtype in ("fp16", "bf16") if "bench" in report["steps"] else ():
        b = report[f"bench_{dtype}"]
        if b["ok"]:
            peak = b.get("peak_memory_bytes", {})
            lines.append(f"bench {dtype}: train step masked/dense {b['train_step_ratio']:.3f}, generation "
                         f"{b['generate_ratio']:.3f}, masks {b['mask_speedup']:.1f}x faster than the naive sort"
                         + (f", peak memory {peak['masked'] / 2**20:.0f} / {peak['dense'] / 2**20:.0f} MiB" if peak else ""))
        else:
            lines.append(f"bench {dtype}: FAILED (exit {b['exit']}, see bench-{dtype}.log)")
    tr = report.get("training")  # absent when --steps left the training step out
    if tr is not None and tr["ok"]:
        g = tr["generate"]
        mem = tr.get("peak_gpu_memory", {})
        lines.append(f"training: {tr['updates']} updates on {tr['corpus']} in {tr['seconds']} s"
                     + (f", peak GPU memory {mem['max_allocated_bytes'] / 2**30:.2f} GiB allocated" if mem else "")
                     + f"; fairseq-generate: BLEU {g['bleu']} on {g['sentences']} sentences ({g['seconds']} s)")
    elif tr is not None:
        lines.append(f"training/generation on {tr.get('corpus')}: FAILED (see train.log, generate.log)")
    for name, t in report["targets"].items():
        if t is not None:
            lines.append(f"target {name} <= {t['limit']}: {t['value']:.3f} {'met' if t['met'] else 'MISSED'}")
    ran = "all steps ran" if set(report["steps"]) == set(STEPS) else f"steps {', '.join(report['steps'])} ran"
    lines.append(f"total {report['seconds']} s; {ran if report['ok'] else 'SOME STEPS FAILED'}")
    return "\n".join(lines) + "\n"


def _steps(text):
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'no step'}: not a step; the steps are "
                                         f"{', '.join(STEPS)}")
    return [s for s in STEPS if s in steps]


def main(argv=None):
    parser = argparse.ArgumentParser(description="one-shot GPU check: tests, benchmark, short training run")
    parser.add_argument("out_dir")
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="run every step on the CPU, tiny (for tests)")
    parser.add_argument("--steps", type=_steps, default=list(STEPS),
                        help=f"comma-separated steps to run, of {', '.join(STEPS)} (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = environment()
    report = {"environment": env, "rehearsal": args.rehearse_on_cpu, "steps": args.steps}
    if not env["gpu"] and not args.rehearse_on_cpu:
        build = f"built for CUDA {env['cuda']}" if env["cuda"] else "a CPU-only build"
        message = f"gpu_check: no CUDA GPU is available (torch {env['torch']}, {build}); nothing was checked"
        report.update(ok=True, skipped=message)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "summary.txt").write_text(message + "\n")
        print(message)
        return 0
    budget = Budget(float(os.environ.get("GPU_CHECK_BUDGET_S", 450)))
    ran = []
    if "tests" in args.steps:
        report["gpu_tests"] = gpu_tests(out, budget, args.rehearse_on_cpu)
        ran.append("gpu_tests")
    for dtype in ("fp16", "bf16") if "bench" in args.steps else ():
        report[f"bench_{dtype}"] = bench(out, budget, dtype, args.rehearse_on_cpu)
        ran.append(f"bench_{dtype}")
    if "training" in args.steps:
        report["training"] = training(out, budget, args.rehearse_on_cpu)
        ran.append("training")
    report["targets"] = targets(report)
    report["seconds"] = round(time.monotonic() - start, 1)
    report["ok"] = all(report[k]["ok"] for k in ran)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = summary(report)
    (out / "summary.txt").write_text(text)
    print(text, end="")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
