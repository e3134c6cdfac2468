"""Verify published artifacts: every file's size and sha256 against its manifest, one line per problem.

    python -m flows.verify STORE                   every published artifact in the store
    python -m flows.verify STORE encode            one stage's artifacts
    python -m flows.verify STORE encode/KEY        one artifact
    python -m flows.verify STORE encode/KEY --repair

Exit status 0 when everything is intact, 1 when something is wrong (or on an error), 2 on bad
arguments. `--repair` unpublishes each damaged artifact and deletes its failing files, so the next
run of its stage builds them again (resuming what is intact). No Prefect: this is storage work.
"""

from __future__ import annotations

import sys

from flows._cli import OneLineErrorParser, run_cli


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m flows.verify STORE [STAGE[/KEY]] [--repair]`."""
    parser = OneLineErrorParser(prog="python -m flows.verify", description=__doc__.splitlines()[0])
    parser.add_argument("store", help="artifact store root, a path or fsspec URL")
    parser.add_argument("target", nargs="?", default=None, help="STAGE or STAGE/KEY (default: every artifact)")
    parser.add_argument("--repair", action="store_true",
                        help="unpublish damaged artifacts, delete their failing files")  # fmt: skip
    args = parser.parse_args(argv)
    failed = False

    def body() -> None:
        nonlocal failed
        from storage.artifacts import ArtifactStore
        from storage.integrity import repair_artifact, verify_store
        from storage.paths import redact_url

        store = ArtifactStore(args.store)
        results = verify_store(store, args.target)
        if not results:
            raise ValueError(f"no published artifacts in {redact_url(store.root)}" +
                             (f" for {args.target}" if args.target else ""))  # fmt: skip
        problems = [line for _, _, lines in results for line in lines]
        for line in problems:
            print(line)
        failed = bool(problems)
        for stage, key, lines in results:
            if args.repair and lines and store.exists(stage, key):
                repair_artifact(store, stage, key)
                print(f"repaired {stage}/{key}: unpublished, damaged files deleted; rerun the {stage} stage")
        state = f"{len(problems)} problem(s)" if problems else "all intact"
        sys.stderr.write(f"verified {len(results)} artifact(s) in {redact_url(store.root)}: {state}\n")

    code = run_cli(body)
    return code or int(failed)


if __name__ == "__main__":
    sys.exit(main())
