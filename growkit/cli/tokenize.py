"""``growkit tokenize``: turn a corpus into a tokens folder that train, grow and bench stream from disk."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="tokenize a corpus once into shards of token ids (for --data of train, grow and bench)",
        description=(
            "Stream DATA through the tokenizer of MODEL_DIR into TOKENS_DIR: one shard of token ids per source\n"
            "file (uint16 when the vocabulary fits, else uint32), every document ended by the end-of-text token,\n"
            "an index.json (tokenizer digest, vocabulary size, counts, the held-out split) and a copy of the\n"
            "tokenizer. DATA is a .txt/.md file (one document), a .jsonl or .jsonl.gz file (one document per\n"
            "line, its text in --text-field), a .parquet file (a --text-field column; needs pyarrow), a folder of\n"
            "such files, or a folder saved by datasets' save_to_disk (needs datasets). Memory stays bounded\n"
            "whatever the corpus size; --workers tokenizes that many files at once. Rerunning the same command\n"
            "after an interruption keeps the files already done. The held-out split is every k-th block of the\n"
            "token stream (k = 1 / --eval-fraction), so evaluation text comes from all over the corpus."
        ),
        epilog=(
            "examples:\n"
            "  growkit tokenize corpus/ --tokenizer runs/small --out runs/tokens --workers 2\n"
            "  growkit train runs/grown --data runs/tokens --steps 2000 --out runs/trained\n"
            "  growkit tokenize pile.jsonl.gz --tokenizer runs/small --out runs/pile-tokens --eval-fraction 0.005"
        ),
    )
    p.add_argument("data", metavar="DATA", type=Path, help="corpus file or folder")
    p.add_argument("--tokenizer", required=True, metavar="MODEL_DIR", type=Path,
                   help="model folder with a tokenizer.json (its config.json's vocab_size is checked)")
    p.add_argument("--out", required=True, metavar="TOKENS_DIR", type=Path, help="new or empty output folder")
    p.add_argument("--workers", type=int, default=1, help="files tokenized in parallel (default 1)")
    p.add_argument("--text-field", default="text", help="the text field of .jsonl rows and Parquet/datasets columns "
                   "(default: text)")
    p.add_argument("--eval-fraction", type=float, default=0.01,
                   help="share of the tokens held out for evaluation (default 0.01)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.pretokenize import tokenize_corpus

    index = tokenize_corpus(args.data, args.tokenizer, args.out, workers=args.workers, field=args.text_field,
                            eval_fraction=args.eval_fraction, progress=False if args.no_progress else None)
    held = index["heldout"]
    print(f"tokenized {len(index['shards'])} files, {index['documents']:,} documents: {index['tokens']:,} tokens "
          f"({index['dtype']}); held out {held['eval_tokens']:,} (every {held['every']}th block of {held['block']})")
    print(f"saved to {args.out}")
    return 0
