"""Prompt-lookup decoding on the batched engine: drafting on vs off, side by side in one run
(issue 13 item 8).

Same GGUF model (SmolLM2-135M-Instruct Q4_1), loaded several times in this process as the
agent loads it (``BatchedTextGenerator``, the agent's default threads): one engine per
longest draft in ``--draft`` (``draft_<n>``), and one that does not draft (``off``). Every
prompt is sent to each, one request at a time, the engine that goes first rotating from
prompt to prompt, temperature 0, ``--max-tokens`` each; every round repeats all prompts.
``verify_batch_ms_p50_by_tokens`` is what one decode batch of k tokens with logits at
every position costs (a draft of k-1 tokens): drafting pays only where it grows slower
than k.

Cases:

- ``grounded``: a system message with 4 numbered source passages of real third-party text
  (paragraphs of the manuals and docs in ``evals/realdocs/docs/``) and a question whose
  answer quotes them, as a grounded (RAG) chat sends them;
- ``plain``: chat prompts without sources, where drafting should not pay.

Reported per case: decode tok/s p50/p95 (first to last streamed piece) on and off, the
on/off ratio of the p50s and the per-prompt ratios' p50, the share of drafted tokens the
model accepted, and the share of requests whose output is identical to plain decoding
(where not, how many tokens in the outputs part). JSON to
``benchmarks/results/prompt_lookup.json``; docs/local-api.md quotes it.

    .venv/bin/python benchmarks/prompt_lookup.py [--rounds 2] [--max-tokens 128] [--draft 1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "prompt_lookup.json"
DOCS = ROOT / "evals" / "realdocs" / "docs"
MODEL = "smollm2"
N_CTX = 2048
SOURCES_PER_PROMPT = 4

INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Quote the sources' own "
    "words where you can and cite them with their numbers in square brackets, like [1]."
)

# (document, question) pairs: each question is answered by passages of that document
GROUNDED = (
    ("logrotate.8.txt", "What does logrotate do, and how often is it normally run?"),
    ("logrotate.8.txt", "What happens when a directory is given on the command line?"),
    ("grep.1.txt", "What does grep do with each pattern? Quote the description."),
    ("grep.1.txt", "How does grep treat its input files, according to the sources?"),
    ("ssh_config.5.txt", "Where does ssh obtain its configuration data, in which order?"),
    ("ssh_config.5.txt", "Which value is used when a parameter is given more than once?"),
    ("systemd.timer.5.txt", "What is a timer unit and what does it control?"),
    ("systemd.timer.5.txt", "Which unit does a timer activate by default?"),
    ("python-json.txt", "What does the json module expose? Quote the sources."),
    ("python-json.txt", "How do you encode Python objects as JSON, according to the sources?"),
    ("python-dotenv.md", "What does python-dotenv do? Quote the sources."),
    ("dpkg-triggers.txt", "What is a trigger, according to the sources?"),
)  # fmt: skip

PLAIN = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten-year-old.",
    "Give me three tips for learning to cook.",
    "What are the seasons of the year and why do they happen?",
    "Describe a quiet harbour at dawn.",
    "Write a friendly email inviting a colleague to lunch.",
    "List some tools a carpenter uses and what they are for.",
    "Why do cats purr?",
    "Tell me about the history of bicycles.",
    "How do plants make their food?",
)


def smollm2_path() -> Path:
    from converters.sources import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


def paragraphs(name: str) -> list[str]:
    """The document's paragraphs of 200-700 characters, whitespace collapsed."""
    text = (DOCS / name).read_text(encoding="utf-8")
    found = []
    for block in re.split(r"\n\s*\n", text):
        flat = " ".join(block.split())
        if 200 <= len(flat) <= 700:
            found.append(flat)
    return found


def grounded_messages(index: int, name: str, question: str) -> list[dict[str, str]]:
    """Instructions and 4 numbered passages of ``name`` in the system message; the
    question as the user's. Two prompts on the same document take different passages."""
    paras = paragraphs(name)
    start = (index % 2) * SOURCES_PER_PROMPT
    picked = paras[start : start + SOURCES_PER_PROMPT] or paras[:SOURCES_PER_PROMPT]
    blocks = [f"[{i + 1}] ({name})\n{p}" for i, p in enumerate(picked)]
    system = INSTRUCTIONS + "\n\nSources:\n\n" + "\n\n".join(blocks)
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@dataclass
class Run:
    case: str
    round: int
    prompt: int
    side: str
    tokens: int
    decode_tok_s: float
    total_s: float
    drafted: int
    accepted: int
    text: str


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def p50_p95(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one(
    generator: Any, case: str, key: tuple[int, int], side: str, messages: Any, max_tokens: int
) -> Run:
    from edge_agent.runtime import ChatTurn, Sampling

    turns = [ChatTurn(m["role"], m["content"]) for m in messages]
    before = generator.engine_stats()
    started = time.perf_counter()
    first = last = started
    parts: list[str] = []
    tokens = 0
    for piece in generator.chat(turns, Sampling(max_tokens=max_tokens, temperature=0)):
        now = time.perf_counter()
        if piece.text:
            if not parts:
                first = now
            last = now
            parts.append(piece.text)
        if piece.finish_reason is not None:
            tokens = piece.completion_tokens
    after = generator.engine_stats()
    span = last - first
    return Run(
        case=case,
        round=key[0],
        prompt=key[1],
        side=side,
        tokens=tokens,
        decode_tok_s=(tokens - 1) / span if span > 0 and tokens > 1 else float("nan"),
        total_s=time.perf_counter() - started,
        drafted=after.drafted_tokens - before.drafted_tokens,
        accepted=after.draft_tokens_accepted - before.draft_tokens_accepted,
        text="".join(parts),
    )


def divergence(tokenize: Any, plain: str, drafted: str) -> dict[str, Any]:
    """Where the drafted output parts from plain decoding's (in tokens of plain's text)."""
    n = 0
    while n < min(len(plain), len(drafted)) and plain[n] == drafted[n]:
        n += 1
    return {"identical": plain == drafted, "first_difference_token": len(tokenize(plain[:n]))}


def case_report(runs: list[Run], side: str, tokenize: Any) -> dict[str, Any]:
    """``side`` against plain decoding ("off") on the same prompts in the same rounds."""
    by_key: dict[tuple[int, int], dict[str, Run]] = {}
    for r in runs:
        by_key.setdefault((r.round, r.prompt), {})[r.side] = r
    pairs = [(v["off"], v[side]) for v in by_key.values()]
    off_list = [a for a, _ in pairs]
    on = [b for _, b in pairs]
    rate_on = [r.decode_tok_s for r in on]
    rate_off = [r.decode_tok_s for r in off_list]
    per_prompt = [b.decode_tok_s / a.decode_tok_s for a, b in pairs]
    drafted = sum(r.drafted for r in on)
    accepted = sum(r.accepted for r in on)
    diffs = [divergence(tokenize, a.text, b.text) for a, b in pairs]
    diverged = [d["first_difference_token"] for d in diffs if not d["identical"]]
    fresh = [d["identical"] for (a, _), d in zip(pairs, diffs, strict=True) if a.round == 0]
    cached = [d["identical"] for (a, _), d in zip(pairs, diffs, strict=True) if a.round > 0]
    return {
        "requests_per_side": len(on),
        "decode_tok_s_on": p50_p95(rate_on),
        "decode_tok_s_off": p50_p95(rate_off),
        "ratio_on_off_p50": percentile(rate_on, 0.5) / percentile(rate_off, 0.5),
        "per_request_ratio": p50_p95(per_prompt),
        "total_s_ratio_on_off": sum(r.total_s for r in on) / sum(r.total_s for r in off_list),
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "accepted_per_generated_token": accepted / max(1, sum(r.tokens for r in on)),
        "identical_output_share": sum(d["identical"] for d in diffs) / len(diffs),
        "identical_output_share_round_0": sum(fresh) / len(fresh) if fresh else None,
        "identical_output_share_later_rounds": sum(cached) / len(cached) if cached else None,
        "diverged_at_token": sorted(diverged),
    }


def plain_vs_itself(runs: list[Run], tokenize: Any) -> dict[str, Any]:
    """Plain decoding against itself: round 0 (the prompt read in one batch) and round 1
    (the prompt's prefix reused from the slot or RAM cache, its last token decoded alone)
    of the same prompts: the floor any batched evaluation's identical share stands on."""
    first = {r.prompt: r for r in runs if r.side == "off" and r.round == 0}
    second = {r.prompt: r for r in runs if r.side == "off" and r.round == 1}
    diffs = [divergence(tokenize, first[p].text, second[p].text) for p in second]
    if not diffs:
        return {}
    return {
        "identical_output_share": sum(d["identical"] for d in diffs) / len(diffs),
        "diverged_at_token": sorted(
            d["first_difference_token"] for d in diffs if not d["identical"]
        ),
    }


def batch_cost_ms(generator: Any, threads: int, threads_batch: int) -> dict[str, float]:
    """p50 time of one decode batch of k tokens with logits at every position (what a
    draft of k-1 costs), after a 300-token prefix, on a context of the generator's model:
    drafting pays only where this grows slower than k."""
    from edge_agent.runtime.batching import BatchItem
    from edge_agent.runtime.llama_batched import LlamaSequences

    llama = generator._llama
    text = (DOCS / "logrotate.8.txt").read_text(encoding="utf-8")[:4000]
    tokens = llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:320]
    sequences = LlamaSequences(
        llama._model,
        llama.context_params,
        slots=1,
        n_ctx_seq=1024,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads_batch,
    )
    cost: dict[str, float] = {}
    try:
        sequences.decode([BatchItem(0, tuple(tokens[:300]), 0, True)])
        for k in (1, 2, 3, 5, 9):
            times = []
            for _ in range(15):
                sequences.truncate(0, 300)
                started = time.perf_counter()
                sequences.decode([BatchItem(0, tuple(tokens[300 : 300 + k]), 300, True, True)])
                times.append((time.perf_counter() - started) * 1000)
            cost[str(k)] = percentile(times, 0.5)
    finally:
        sequences.close()
    return cost


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from edge_agent.release import InstalledArtifact
    from edge_agent.runtime.llama_batched import BatchedTextGenerator
    from edge_agent.runtime.options import resolve_options
    from edge_agent.settings import AgentSettings

    path = args.model or smollm2_path()
    artifact = InstalledArtifact(
        name=MODEL,
        kind="llm",
        format="gguf",
        sha256=hashlib.sha256(str(path).encode()).hexdigest(),
        length=path.stat().st_size,
        path=path,
    )
    options = resolve_options(AgentSettings(n_ctx=N_CTX), {}, MODEL)
    if args.threads:
        options = replace(options, n_threads=args.threads)
    drafts = [int(d) for d in args.draft.split(",")]
    sides = {"off": BatchedTextGenerator.load(artifact, replace(options, prompt_lookup_draft=0))}
    for d in drafts:
        sides[f"draft_{d}"] = BatchedTextGenerator.load(
            artifact, replace(options, prompt_lookup_draft=d)
        )
    cases: dict[str, list[Any]] = {
        "grounded": [grounded_messages(i, d, q) for i, (d, q) in enumerate(GROUNDED)],
        "plain": [[{"role": "user", "content": q}] for q in PLAIN],
    }
    runs: list[Run] = []
    try:
        for name, side in sides.items():  # warm both (first-load page faults, caches)
            one(side, "warmup", (-1, 0), name, cases["plain"][0], 16)
        for rnd in range(args.rounds):
            for case, prompts in cases.items():
                for i, messages in enumerate(prompts):
                    names = list(sides)
                    shift = (rnd * len(prompts) + i) % len(names)  # every side leads in turn
                    for side in names[shift:] + names[:shift]:
                        run = one(sides[side], case, (rnd, i), side, messages, args.max_tokens)
                        runs.append(run)
                    log(
                        f"round {rnd} {case} {i}: "
                        + " ".join(
                            f"{r.side} {r.decode_tok_s:.1f} tok/s ({r.accepted} accepted)"
                            for r in runs[-len(names) :]
                        )
                    )
        tokenize = sides["off"]._llama.tokenize

        def count(text: str) -> list[int]:
            return list(tokenize(text.encode("utf-8"), add_bos=False, special=False))

        cost = batch_cost_ms(sides["off"], options.n_threads, options.batch_threads)
        report = {
            case: {
                side: case_report(
                    [r for r in runs if r.case == case],
                    side,
                    count,
                )
                for side in sides
                if side != "off"
            }
            for case in cases
        }
        itself = {
            case: plain_vs_itself([r for r in runs if r.case == case], count) for case in cases
        }
    finally:
        for side in sides.values():
            side.close()
    return {
        "benchmark": "prompt_lookup",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "model": path.name,
        "settings": {
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "drafts": drafts,
            "n_threads": options.n_threads,
            "n_threads_batch": options.batch_threads,
            "n_ctx": N_CTX,
            "temperature": 0,
            "grounded_prompts": len(cases["grounded"]),
            "plain_prompts": len(cases["plain"]),
        },
        "cases": report,
        "plain_decoding_vs_itself": itself,
        "verify_batch_ms_p50_by_tokens": cost,
        "runs": [{k: v for k, v in asdict(r).items() if k != "text"} for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--draft", default="1,2", help="longest draft per step; a list: one engine each"
    )
    parser.add_argument("--threads", type=int, default=0, help="decode threads (0: agent's)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = bench(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for case, by_side in report["cases"].items():
        for side, numbers in by_side.items():
            log(
                f"{case} {side}: on/off decode p50 ratio {numbers['ratio_on_off_p50']:.2f}, "
                f"acceptance {numbers['acceptance_rate']:.2f}, "
                f"identical {numbers['identical_output_share']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
