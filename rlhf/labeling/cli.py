"""`rlhf label ...`: preference collection from the command line.

Wired into the main CLI by `register(subparsers)`; also runnable alone: `python -m rlhf.labeling.cli label ...`.
Heavy imports (FastAPI, uvicorn, torch via export) happen inside the handlers so `rlhf --help` stays fast.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from rlhf.errors import UserError

DB_HELP = "database: a path means SQLite (e.g. runs/NAME/labels.db), or a URL such as postgresql+psycopg://user:pw@host/db"


def register(subparsers: Any) -> None:
    """Add the `label` command and its subcommands to an argparse subparsers object."""
    label = subparsers.add_parser("label", help="collect preferences: tasks, users, web app, simulation, import/export")
    sub = label.add_subparsers(dest="label_command", metavar="SUBCOMMAND", required=True)

    def cmd(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", required=True, help=DB_HELP)
        p.set_defaults(func=func)
        return p

    p = cmd("add-tasks", "turn `rlhf sample` output (SAMPLES.jsonl) into labeling tasks", add_tasks)
    p.add_argument("samples", type=Path, help="JSONL rows {prompt_id, prompt, responses: [...], ended: [...], model, sampling}")
    p.add_argument("--kind", choices=("pairwise", "ranking"), default="pairwise", help="task kind (default pairwise)")
    p.add_argument("--overlap", type=int, default=1, help="distinct labelers per task (default 1)")
    p.add_argument(
        "--pairs",
        choices=("disjoint", "all"),
        default="disjoint",
        help="pairwise with K > 2 responses: disjoint pairs (0,1),(2,3),... or all K(K-1)/2 pairs",
    )
    p.add_argument("--skip-bad", action="store_true", help="add the good rows and report the bad ones (default: add nothing)")  # noqa: E501

    p = cmd("add-user", "create a labeler or admin; prints a one-time invite link and, last, the API token", add_user)
    p.add_argument("name")
    p.add_argument("--role", choices=("labeler", "admin"), default="labeler")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="where `serve` is reachable (for the link)")

    p = cmd("invite", "print a new one-time invite link for an existing user (older unused links stop working)", invite)
    p.add_argument("name")
    p.add_argument("--base-url", default="http://127.0.0.1:8000")

    p = cmd("revoke", "end a user's browser sessions and/or void their API token and unused invites", revoke)
    p.add_argument("name")
    p.add_argument("--sessions", action="store_true", help="end every signed-in browser of the user")
    p.add_argument("--tokens", action="store_true", help="void the API token and unused invite links")
    p.add_argument("--new-token", action="store_true", help="with --tokens: print a replacement API token")
    p.add_argument("--deactivate", action="store_true", help="also deactivate the user (no sign-in, no API) until "
                   "`rlhf label activate`")  # fmt: skip

    p = cmd("activate", "re-activate a deactivated user (then send them a new invite)", activate)
    p.add_argument("name")

    p = cmd("serve", "serve the labeling web app and JSON API", serve)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="signing key file (created 0600 on first start; default next to a SQLite db, else "
        "~/.config/rlhf/labeling.secret); $RLHF_LABEL_SECRET overrides",
    )
    p.add_argument("--rate-limit", type=float, default=10.0, help="requests per second per user (0: off)")
    p.add_argument("--burst", type=int, default=60, help="requests a user may make at once before the limit")
    p.add_argument("--gold-rate", type=float, default=0.1, help="chance that the next task is an unseen gold task")
    p.add_argument(
        "--secure-cookies",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force Secure cookies on/off (default: when the request came over https)",
    )
    p.add_argument("--max-body-kb", type=int, default=64, help="largest request body accepted (KiB)")
    p.add_argument(
        "--trusted-proxy",
        default=None,
        metavar="ADDRS",
        help="comma-separated addresses of reverse proxies whose X-Forwarded-For/-Proto are believed (default: none, "
        "so clients cannot pick their own address for the rate limiter)",
    )
    # No "trace": uvicorn's trace level logs whole request scopes, headers included (cookies, bearer tokens).
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    p = cmd("simulate", "let simulated labelers (gold judge + Bradley-Terry noise) answer the open tasks", simulate)
    p.add_argument("--samples", type=Path, default=None, help="first add tasks from this SAMPLES.jsonl (as add-tasks)")
    p.add_argument("--kind", choices=("pairwise", "ranking"), default="pairwise", help="with --samples: task kind")
    p.add_argument("--overlap", type=int, default=1, help="with --samples: labelers per task")
    p.add_argument("--labelers", type=int, default=3, help="number of noisy labelers")
    p.add_argument("--beta", default="5", help="BT inverse noise per labeler, comma-separated, cycled (default 5)")
    p.add_argument("--mix-order", action="store_true", help="shuffle which labeler asks first each round, so that with "
                   "--overlap the labelers share tasks with all the others (default: a fixed order, the same groups)")
    p.add_argument("--flip", default="0", help="per labeler, comma-separated, cycled: probability that the labeler "
                   "answers the opposite of what its noise model chose (a deliberately bad labeler; default 0)")
    p.add_argument("--length-bias", type=float, default=0.0, help="extra logit per 100 characters longer")
    p.add_argument("--random-clickers", type=int, default=0, help="extra labelers who answer at random")
    p.add_argument("--tie-threshold", type=float, default=0.0, help="pairwise: tie when gold scores differ less")
    p.add_argument("--heldout", type=float, default=0.0, help="fraction of tasks marked heldout (0: no splits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gold-rate", type=float, default=0.0)
    p.add_argument("--max-judgments", type=int, default=None)
    p.add_argument("--judge", default="rlhf.data.gold:gold_score", help="module:function text -> score")
    p.add_argument("--name-prefix", default="sim", help="simulated users are named PREFIX-1, PREFIX-2, ...")

    p = cmd("import", "import preference files (HH, TRL, UltraFeedback; JSONL, Parquet or datasets folder)", import_)
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--format", default="auto", choices=("auto", "hh", "trl", "ultrafeedback"),
                   help="file layout (default auto: from the first row; a file mixing layouts is refused); "
                   "ultrafeedback: raw (completions) or binarized (chosen/rejected messages, score_chosen/rejected)")
    p.add_argument("--strict", action="store_true", help="any bad row: import nothing from that file")
    p.add_argument("--overlap", type=int, default=0, help="also show imported tasks to N labelers (default 0)")

    p = cmd("export", "write consensus pairs (TRL JSONL), raw judgments and a meta JSON", export)
    p.add_argument("--out", type=Path, required=True, help="e.g. runs/NAME/preferences.jsonl; with --format datasets "
                   "or parquet a folder (e.g. runs/NAME/preferences_ds)")
    p.add_argument("--raw", type=Path, default=None, help="raw judgments file (default <out stem>.raw.jsonl; jsonl only)")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "datasets", "parquet"),
                   help="jsonl (default); datasets: a Dataset.save_to_disk folder; parquet: a folder with "
                   "preferences.parquet; both with a dataset card README.md, raw judgments and meta")
    p.add_argument("--weight", default="none", choices=("none", "reliability"),
                   help="reliability: add a per-pair loss 'weight' = max(0, 2q-1) from the labelers' estimated "
                   "accuracies (needs overlap or gold tasks; docs/labeling.md)")

    p = cmd("stats", "print progress and agreement as JSON", stats)

    p = cmd("guidelines", "set the labeling guidelines (Markdown) shown at /guidelines and linked from every task; "
            "without --file or --clear, print the current ones", guidelines)
    p.add_argument("--file", type=Path, default=None, help="a UTF-8 Markdown file (raw HTML in it is shown as text)")
    p.add_argument("--clear", action="store_true", help="remove the guidelines (the history is kept)")


def _store(args: argparse.Namespace, *, create: bool = True) -> Any:
    """The store of --db. create=False for commands that only read (or need existing users): a typo'd --db is then
    an error instead of a new empty database."""
    from sqlalchemy.engine import make_url

    from rlhf.labeling.store import Store

    try:
        return Store(args.db, create=create)
    except UserError:
        raise
    except Exception as e:  # a bad URL or an unreachable server: one line naming the cause
        shown = make_url(args.db).render_as_string(hide_password=True) if "://" in args.db else args.db
        reason = " ".join(str(e).split())[:300]
        raise UserError(f"--db {shown}: cannot open the database ({type(e).__name__}: {reason})") from None


# -- handlers ----------------------------------------------------------------------------------------------------


def read_samples(path: Path, kind: str, overlap: int, pairs: str) -> tuple[list[Any], list[str], int]:
    """SAMPLES.jsonl -> (task specs, errors "file:line: field 'x': why", responses left unpaired)."""
    from rlhf.labeling.store import MAX_RANKING, TaskSpec

    if not path.exists():
        raise UserError(f"{path}: not found")
    specs, errors, unpaired, rows = [], [], 0, 0
    from rlhf.io import open_text

    with open_text(path) as f:  # a folder or non-UTF-8 bytes: one line naming the file
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            rows += 1
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            problem = _check_sample(row)
            if problem:
                errors.append(f"{where}: {problem}")
                continue
            responses, gold, ended = row["responses"], row.get("gold_ranks"), row.get("ended")
            source = {k: row[k] for k in ("prompt_id", "model", "sampling") if k in row}
            source |= {"file": path.name, "line": lineno}
            prompt = row["prompt"]
            if isinstance(prompt, list):  # a chat prompt (`rlhf sample` keeps it): shown as turns, exported as messages
                from rlhf.data.preferences import render_messages

                source["prompt_messages"], prompt = prompt, render_messages(prompt)
            if kind == "ranking":
                if len(responses) > MAX_RANKING:
                    errors.append(
                        f"{where}: field 'responses': {len(responses)} responses, a ranking takes at most "
                        f"{MAX_RANKING}; use --kind pairwise"
                    )
                    continue
                specs.append(TaskSpec("ranking", prompt, responses, source, overlap, gold, ended))
                continue
            if pairs == "all":
                index_pairs = list(itertools.combinations(range(len(responses)), 2))
            else:
                index_pairs = [(i, i + 1) for i in range(0, len(responses) - 1, 2)]
                unpaired += len(responses) % 2
            for i, j in index_pairs:
                g = [gold[i], gold[j]] if gold else None
                g = [1 + (g[1] < g[0]), 1 + (g[0] < g[1])] if g else None  # re-rank within the pair
                e = [ended[i], ended[j]] if ended is not None else None
                specs.append(
                    TaskSpec(
                        "pairwise", prompt, [responses[i], responses[j]], source | {"response_indices": [i, j]},
                        overlap, g, e,
                    )
                )  # fmt: skip
    if rows == 0:
        raise UserError(f"{path}: no rows (the file is empty); write it with `rlhf sample`")
    return specs, errors, unpaired


def _check_sample(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "expected a JSON object"
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                                 for m in prompt):  # fmt: skip
            return "field 'prompt': a list of messages must hold objects {'role': str, 'content': str}"
    elif not isinstance(prompt, str):
        return "field 'prompt': missing, or not a string or a list of messages"
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        return "field 'responses': expected a list of at least 2 strings"
    if "prompt_id" in row and not isinstance(row["prompt_id"], (str, int)):
        return "field 'prompt_id': expected a string"
    gold = row.get("gold_ranks")
    if gold is not None and (
        not isinstance(gold, list)
        or len(gold) != len(responses)
        or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= len(responses) for r in gold)
    ):
        return "field 'gold_ranks': expected one rank (1 = best) per response"
    ended = row.get("ended")
    if ended is not None and (
        not isinstance(ended, list) or len(ended) != len(responses) or not all(isinstance(e, bool) for e in ended)
    ):
        return "field 'ended': expected one true/false per response (true: the response stopped by itself at EOS)"
    prompt_texts = [prompt] if isinstance(prompt, str) else [m["content"] + m["role"] for m in prompt]
    if any("\x00" in t for t in prompt_texts) or any("\x00" in r for r in responses):
        return "field 'responses': text contains a NUL character"
    return None


def add_tasks(args: argparse.Namespace) -> int:
    if args.overlap < 1:
        raise UserError(f"--overlap must be >= 1, got {args.overlap}")
    specs, errors, unpaired = read_samples(args.samples, args.kind, args.overlap, args.pairs)
    if errors and not args.skip_bad:
        raise UserError(
            f"{len(errors)} bad rows in {args.samples}, nothing added (first: {errors[0]}); fix them or pass --skip-bad"
        )
    for e in errors[:20]:
        print(f"skipped: {e}", file=sys.stderr)
    store = _store(args)
    new, existing = store.add_tasks(specs)
    gold = sum(s.gold_ranks is not None for s in specs)
    print(
        f"added {len(new)} {args.kind} tasks from {args.samples} (overlap {args.overlap}; {existing} already "
        f"present; {gold} gold; {len(errors)} bad rows skipped; {unpaired} responses left unpaired)"
    )
    return 0


def add_user(args: argparse.Namespace) -> int:
    store = _store(args)
    new = store.create_user(args.name, args.role)
    print(f"created {new.user.role} {new.user.name!r} (id {new.user.id})")
    print(f"invite link (one-time, valid 7 days): {args.base_url.rstrip('/')}/invite/{new.invite_token}")
    print("API token (shown once; scripts send 'Authorization: Bearer TOKEN'):")
    print(new.api_token)
    return 0


def invite(args: argparse.Namespace) -> int:
    token = _store(args, create=False).new_invite(args.name)
    print(f"{args.base_url.rstrip('/')}/invite/{token}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    if args.new_token and args.deactivate:
        raise UserError("--new-token and --deactivate contradict each other: a deactivated user has no token")
    sessions, tokens = args.sessions, args.tokens or args.new_token
    if not (sessions or tokens or args.deactivate):
        sessions = tokens = True  # no choice given: revoke everything
    out = _store(args, create=False).revoke(
        args.name, tokens=tokens, sessions=sessions, new_token=args.new_token, deactivate=args.deactivate
    )
    what = [f"{out['sessions']} sessions ended"] if sessions or args.deactivate else []
    if tokens or args.deactivate:
        what.append(f"API token {'voided' if out['api_token'] else 'was already void'}, {out['invites']} unused invites voided")
    print(f"{args.name}: {'; '.join(what)}" + ("; user deactivated" if args.deactivate else ""))
    if out["new_api_token"]:
        print("new API token (shown once):")
        print(out["new_api_token"])
    return 0


def activate(args: argparse.Namespace) -> int:
    _store(args, create=False).activate(args.name)
    print(f"{args.name}: active again; send a new invite with `rlhf label invite {args.name}`")
    return 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from rlhf.labeling.app import create_app
    from rlhf.labeling.security import install_log_redaction, load_or_create_secret

    if args.max_body_kb < 1:
        raise UserError(f"--max-body-kb must be >= 1, got {args.max_body_kb}")
    if not 0.0 <= args.gold_rate <= 1.0:
        raise UserError(f"--gold-rate must be a probability in [0, 1], got {args.gold_rate}")
    if args.rate_limit < 0:
        raise UserError(f"--rate-limit must be >= 0 requests per second (0: off), got {args.rate_limit}")
    if args.burst < 1:
        raise UserError(f"--burst must be >= 1, got {args.burst}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    proxies = [a.strip() for a in (args.trusted_proxy or "").split(",") if a.strip()]
    store = _store(args)
    secret = load_or_create_secret(store.url, args.secret_file)
    app = create_app(
        store,
        secret,
        rate_per_s=args.rate_limit,
        burst=args.burst,
        gold_rate=args.gold_rate,
        secure_cookies=args.secure_cookies,
        max_body_bytes=args.max_body_kb * 1024,
    )
    print(f"serving http://{args.host}:{args.port}/ (labelers: /label, admins: /admin, API docs: /docs)", flush=True)
    # Forwarded headers only from the proxies the operator names: uvicorn's default trusts 127.0.0.1, so any local
    # client (or a proxy that passes the header through) could pick its own address and dodge the rate limits.
    # Behind a trusted TLS proxy, X-Forwarded-Proto=https makes the session cookie Secure.
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )  # fmt: skip
    install_log_redaction()  # again after uvicorn configured its loggers
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # e.g. the port is taken: uvicorn logged why
        raise UserError(f"could not start the server on {args.host}:{args.port} (see the error above)")
    return 0


def simulate(args: argparse.Namespace) -> int:
    from rlhf.labeling.simulate import SimLabeler, load_judge
    from rlhf.labeling.simulate import simulate as run_simulation

    try:
        betas = [float(b) for b in str(args.beta).split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--beta {args.beta!r}: expected numbers separated by commas, e.g. 2,5,10") from None
    try:
        flips = [float(f) for f in str(args.flip).split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--flip {args.flip!r}: expected probabilities separated by commas, e.g. 0,0,0.3") from None
    if not flips or not all(0.0 <= f <= 1.0 for f in flips):
        raise UserError(f"--flip {args.flip!r}: each value must be a probability in [0, 1]")
    if not betas or args.labelers < 0 or args.random_clickers < 0 or args.labelers + args.random_clickers == 0:
        raise UserError("need at least one labeler: --labelers N (and --beta B1,B2,...) or --random-clickers N")
    if not 0.0 <= args.gold_rate <= 1.0:
        raise UserError(f"--gold-rate must be a probability in [0, 1], got {args.gold_rate}")
    if args.samples is not None and args.overlap < 1:
        raise UserError(f"--overlap must be >= 1, got {args.overlap}")
    labelers = [
        SimLabeler(
            f"{args.name_prefix}-{n + 1}",
            beta=betas[n % len(betas)],
            flip=flips[n % len(flips)],
            length_bias=args.length_bias,
            tie_threshold=args.tie_threshold,
        )
        for n in range(args.labelers)
    ]
    labelers += [SimLabeler(f"{args.name_prefix}-random-{n + 1}", random_clicker=True) for n in range(args.random_clickers)]
    judge = load_judge(args.judge)
    store = _store(args)
    if args.samples is not None:
        specs, errors, _unpaired = read_samples(args.samples, args.kind, args.overlap, "disjoint")
        if errors:
            raise UserError(f"{len(errors)} bad rows in {args.samples}, nothing added (first: {errors[0]})")
        new, existing = store.add_tasks(specs)
        print(f"added {len(new)} {args.kind} tasks from {args.samples} ({existing} already present)")
    meta = run_simulation(
        store,
        labelers,
        judge,
        judge_name=args.judge,
        heldout_fraction=args.heldout,
        seed=args.seed,
        gold_rate=args.gold_rate,
        max_judgments=args.max_judgments,
        mix_order=args.mix_order,
    )
    acc = meta["bayes_accuracy"]
    print(
        f"simulated {meta['judgments_made']} judgments by {len(labelers)} labelers; Bayes-optimal accuracy "
        f"{'n/a' if acc is None else f'{acc:.4f}'} on {meta['bayes_pairs']} {meta['bayes_scope']} pairs"
    )
    return 0


def import_(args: argparse.Namespace) -> int:
    from rlhf.labeling.importer import import_file

    store = _store(args)
    for path in args.files:
        report, imported, duplicates = import_file(store, path, fmt=args.format, strict=args.strict, overlap=args.overlap)
        for line in report.summary():
            print(line, file=sys.stderr if line.startswith(" ") else sys.stdout)
        print(f"{path}: {imported} imported, {duplicates} already present")
    return 0


def export(args: argparse.Namespace) -> int:
    from rlhf.io import check_output
    from rlhf.labeling.export import export as run_export
    from rlhf.labeling.export import meta_path

    folder = args.format != "jsonl"
    if folder and args.raw:
        raise UserError(f"--raw: with --format {args.format} the raw judgments go into the --out folder "
                        "(preferences.raw.jsonl); drop --raw")
    check_output(args.out, "dir" if folder else "file", "--out")  # before the store is read
    if args.raw:
        check_output(args.raw, "file", "--raw")
    meta = run_export(_store(args, create=False), args.out, args.raw, fmt=args.format, weight=args.weight)
    c = meta["counts"]
    acc = meta["bayes_accuracy"]
    where = f"the folder {args.out} (with README.md, raw judgments and meta)" if folder else (
        f"{args.out} ({c['raw_judgments']} raw judgments to {meta['files']['raw']}, meta to {meta_path(args.out).name})")
    rel = meta["reliability"]
    print(
        f"wrote {c['pairs']} pairs to {where}; {c['no_consensus']} comparisons without consensus, "
        f"{c['gold_tasks_excluded']} gold and {c['flagged_tasks_excluded']} flagged tasks left out"
        + ("" if acc is None else f"; Bayes-optimal accuracy {acc:.4f}")
        + (f"; weights: mean {rel['mean_weight']:.3f}, {rel['pairs_against_posterior']} pairs at 0 (posterior "
           "against the vote)" if "mean_weight" in rel else "")
    )
    if args.weight == "reliability" and rel["no_evidence"]:
        print(f"note: no overlap or gold for {', '.join(rel['no_evidence'])}: their votes use the mean estimated "
              f"accuracy {rel['fallback_accuracy']:.3f}", file=sys.stderr)
    return 0


def stats(args: argparse.Namespace) -> int:
    from rlhf.labeling.agreement import report

    print(json.dumps(report(_store(args, create=False)), indent=2, default=str))
    return 0


def guidelines(args: argparse.Namespace) -> int:
    from rlhf.io import open_text

    if args.file is not None and args.clear:
        raise UserError("give --file or --clear, not both")
    if args.file is None and not args.clear:
        current = _store(args, create=False).guidelines()
        if current is None:
            print("no guidelines set; set them with: rlhf label guidelines --db DB --file guidelines.md", file=sys.stderr)
            return 1
        print(current[0])
        return 0
    text = ""
    if args.file is not None:
        with open_text(args.file) as f:  # a missing file, a folder or non-UTF-8 bytes: one line naming the file
            text = "".join(f)
        if not text.strip():
            raise UserError(f"{args.file}: empty; write the guidelines in it, or use --clear to remove them")
    version = _store(args).set_guidelines(text)
    print(f"guidelines {'removed' if args.clear else f'set ({len(text)} characters)'}: version {version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
