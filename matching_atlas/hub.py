"""Runs shared on the Hugging Face Hub (``pip install 'matching-atlas[hub]'``).

``atlas publish RUN --repo user/name`` verifies every table of a finished run (page checksums, row counts, column
bounds, the run identity each file records: the app's checks), then uploads its tables and manifest as a dataset
repository in one commit with a generated dataset card: the model and its revision, the dataset, the command that
reruns the run, the schema version, one ``configs`` entry per table (the Hub's viewer shows each table) and the
checks that passed.

``hf://datasets/user/name`` (``@revision`` optional) names such a run wherever a run folder is taken (``atlas report``,
``atlas app --store``): :func:`fetch` copies its files through an fsspec filesystem (huggingface_hub's
HfFileSystem) into a local cache, keyed by each file's remote hash, and verifies them exactly as a local run is
verified before anything is shown; a file that fails is deleted from the cache and the error names it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from precompute.console import first_line

HF_PREFIX = "hf://"
DATASETS = "datasets/"
CARD = "README.md"
MANIFEST = "manifest.json"
EXIT_BAD_INPUT = 2


class HubError(Exception):
    """A run that cannot be published or fetched (one line)."""


# -- verification (before publishing, after fetching) ----------------------------------------------------------


def verify_run(run: Path) -> tuple[Any, list[str], list[str]]:
    """(manifest, its tables, the checks that passed: one line per table) of a finished run; HubError naming the first file that
    fails. The same checks the app runs before showing a run (precompute.store.integrity)."""
    from precompute.store import integrity, layout, schema
    from precompute.store.manifest import ManifestError, read_manifest

    run = Path(run)
    try:
        manifest = read_manifest(run)
    except ManifestError as err:
        raise HubError(f"{run / MANIFEST}: {first_line(err)}") from err
    if manifest is None:
        raise HubError(f"{run} is not a run folder (no {MANIFEST}); pass a folder the job wrote (--out)")
    if not manifest.complete:
        raise HubError(f"{run} is not a finished run (status {manifest.status!r}); rerun the job to finish it")
    current = manifest.schema_version == schema.SCHEMA_VERSION
    identity = manifest.identity.to_dict()
    passed = []
    names = sorted(set(manifest.tables) | {name for name in schema.TABLES if layout.location(run, name) is not None}
                   | {p.stem for p in run.glob("*.parquet")})  # + derived (head_attention_agg)
    for name in names:
        info, paths = manifest.tables.get(name), layout.files(run, name) or [layout.path(run, name)]
        expected = getattr(info, "rows", None)
        rows, stamped = 0, False
        for path in paths:
            stamped = integrity.stored_identity(path) is not None if path.exists() else False
            try:
                rows += integrity.verify(path, name, schema.TABLES[name].schema if current and name in schema.TABLES
                                         else None, rows=expected if len(paths) == 1 else None,
                                         identity=identity if stamped else None)
            except (integrity.CorruptFile, OSError) as err:
                raise HubError(f"{first_line(err)}; rerun the job's command to rebuild it") from err
        if expected is not None and rows != expected:
            raise HubError(f"{layout.path(run, name)} holds {rows:,} rows where the manifest records {expected:,}; "
                           "rerun the job's command to rebuild it")
        passed.append(f"{name}: {rows:,} rows" + (f" in {len(paths)} files" if len(paths) > 1 else "")
                      + "; page checksums, row count, column types and bounds" + (", run identity" if stamped else ""))
    return manifest, names, passed


# -- publishing --------------------------------------------------------------------------------------------------


def _data_files(table: str) -> str:
    """The table's files in the repository as the card's ``data_files`` pattern: its file, or its partition files."""
    from precompute.store import layout

    column = layout.partition_column(table)
    return f"{table}/{column}=*/*.parquet" if column else f"{table}.parquet"


def _table_files(run: Path, tables: list[str]) -> list[str]:
    """Every data file of ``tables`` in ``run``, relative to it (partitioned tables: one file per partition)."""
    from precompute.store import layout

    return [str(path.relative_to(run)) for name in tables for path in layout.files(run, name)]


def card(manifest, tables: list[str], passed: list[str]) -> str:
    """The dataset card: YAML front matter with one ``configs`` entry per table, then what the run is."""
    from precompute.config import rerun_command

    model, dataset = manifest.model, manifest.dataset
    front = ["---", "tags:", "- matching-atlas", "- information-retrieval", "- interpretability", "configs:"]
    for name in tables:
        front += [f"- config_name: {name}", f"  data_files: {_data_files(name)}"]
    front.append("---")
    adapter = getattr(model, "adapter", None)
    lines = [
        f"# Matching Atlas run: {model.name} on {dataset.name}", "",
        "How a reranker decides that a passage matches a query, head by head: per-pair attention summaries, scores, "
        "ablations and their significance, written by the Matching Atlas precompute job "
        "(https://arxiv.org/abs/2507.14604 for the method).", "",
        "| | |", "| --- | --- |",
        f"| model | `{model.id}` ({model.architecture}, family {model.family}) |",
        f"| model revision | `{model.revision or manifest.identity.revision or 'a local folder (no revision)'}` |",
        *([f"| PEFT adapter on | `{adapter.get('base')}` |"] if adapter else []),
        f"| dataset | `{dataset.spec}` ({dataset.source}) |",
        f"| pairs | {manifest.counts.pairs:,} over {manifest.counts.queries:,} queries |",
        f"| store schema version | {manifest.schema_version} |", "",
        "## Command", "", "```", rerun_command(manifest.job_settings(), "RUN"), "```", "",
        "## Tables", "", "One config per table (schema: docs/store.md of the Matching Atlas repository): "
        + ", ".join(f"`{t}`" for t in tables) + ".", "",
        "## Checks that passed before upload", "", *[f"- {line}" for line in passed], "",
        "Open it: `atlas report hf://datasets/REPO` or `atlas app --store hf://datasets/REPO`; both verify the files "
        "again after download.",
    ]
    return "\n".join(front + [""] + lines) + "\n"


def publish(run: Path, repo: str, *, api=None, private: bool = False, message: str | None = None) -> str:
    """Verify ``run`` and upload its tables, manifest and card to the dataset repository ``repo`` in one commit;
    returns the run's ``hf://`` path. ``api``: a huggingface_hub.HfApi (default) or a stand-in with its
    create_repo / create_commit."""
    from huggingface_hub import CommitOperationAdd

    run = Path(run)
    manifest, tables, passed = verify_run(run)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    files = [MANIFEST, *_table_files(run, tables)]
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(run / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card(manifest, tables, passed).encode()))
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=private)
        api.create_commit(repo_id=repo, repo_type="dataset", operations=operations,
                          commit_message=message or f"Matching Atlas run {run.name}")
    except Exception as err:  # network, authentication, a name taken: huggingface_hub raises its own classes
        raise HubError(f"uploading {run} to {repo} failed: {first_line(err)}") from err
    return f"{HF_PREFIX}{DATASETS}{repo}"


class LocalHub:
    """A file-based stand-in for the Hub's API (create_repo, create_commit): ``root/datasets/<repo>/<file>``, the
    layout :class:`LocalHubFileSystem` reads back as ``hf://``. For tests and for machines without the Hub."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def create_repo(self, repo_id: str, *, repo_type: str, exist_ok: bool = False, private: bool = False) -> None:
        folder = self.root / f"{repo_type}s" / repo_id
        if folder.exists() and not exist_ok:
            raise FileExistsError(f"repository {repo_id} exists")
        folder.mkdir(parents=True, exist_ok=True)

    def create_commit(self, *, repo_id: str, repo_type: str, operations, commit_message: str) -> None:
        folder = self.root / f"{repo_type}s" / repo_id
        for op in operations:
            target = folder / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with op.as_file() as src, open(target, "wb") as dst:
                dst.write(src.read())


def _local_hub_filesystem_class():
    from fsspec.implementations.dirfs import DirFileSystem

    class LocalHubFileSystem(DirFileSystem):
        """``hf://`` paths read from a :class:`LocalHub` folder (fsspec's DirFileSystem over the local disk)."""

        protocol = "hf"

        def __init__(self, root: Path, **kwargs):
            super().__init__(path=str(root), fs=None, **kwargs)

    return LocalHubFileSystem


def local_hub_filesystem(root: Path):
    """An fsspec filesystem answering ``hf://datasets/...`` from a :class:`LocalHub` folder."""
    return _local_hub_filesystem_class()(root)


# -- reading -------------------------------------------------------------------------------------------------------


def is_hub_path(text: str) -> bool:
    return str(text).startswith(HF_PREFIX)


def filesystem():
    """The filesystem ``hf://`` paths are read through: huggingface_hub's HfFileSystem (token and endpoint from the
    environment, as every huggingface_hub client)."""
    try:
        from huggingface_hub import HfFileSystem
    except ImportError as err:
        raise HubError("hf:// runs need huggingface_hub: pip install 'matching-atlas[hub]'") from err
    return HfFileSystem()


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "matching-atlas" / "runs"


def fetch(url: str, *, fs=None, cache: Path | None = None) -> Path:
    """The run at ``url`` (``hf://datasets/user/name[@revision]``) as a verified local folder: its manifest and table
    files copied into ``cache`` (default: under HF_HOME) unless the cached copy has the same remote hash, then checked
    as the app checks a run (:func:`verify_run`). HubError naming the file when one fails (it is deleted, so the next
    try downloads it again)."""
    if not is_hub_path(url) or not url[len(HF_PREFIX):].startswith(DATASETS):
        raise HubError(f"{url} is not a Hub dataset path; expected hf://datasets/USER/NAME")
    repo_path = url[len(HF_PREFIX):].rstrip("/")
    repo, _, revision = repo_path.partition("@")
    if repo.count("/") != 2:
        raise HubError(f"{url}: expected hf://datasets/USER/NAME (optionally @REVISION)")
    fs = filesystem() if fs is None else fs
    folder = (cache or cache_root()) / repo[len(DATASETS):].replace("/", "--") / (revision or "main")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        found = fs.find(repo_path, detail=True)
        listing = {name[len(repo_path):].lstrip("/"): e for name, e in found.items() if e.get("type") == "file"}
    except FileNotFoundError as err:
        raise HubError(f"{url}: no such dataset repository or revision ({first_line(err)})") from err
    except Exception as err:  # network, authentication: huggingface_hub / httpx raise their own classes
        raise HubError(f"{url}: the Hub could not be reached ({first_line(err)}); check the network and HF_TOKEN, "
                       "or pass a local run folder") from err
    if MANIFEST not in listing:
        raise HubError(f"{url} holds no {MANIFEST}: it is not a Matching Atlas run")
    hashes_file = folder / ".remote-hashes.tsv"
    known = _read_hashes(hashes_file)
    wanted = [n for n in listing if n == MANIFEST or n.endswith(".parquet")]
    for name in wanted:
        remote = _remote_hash(listing[name])
        if known.get(name) == remote and (folder / name).exists():
            continue
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        fs.get_file(f"{repo_path}/{name}", str(partial))
        partial.replace(target)
        known[name] = remote
    _write_hashes(hashes_file, known)
    try:
        verify_run(folder)
    except HubError as err:
        for name in wanted:
            if name in str(err):
                (folder / name).unlink(missing_ok=True)
                known.pop(name, None)
        _write_hashes(hashes_file, known)
        raise HubError(f"{url}: {err}") from err
    return folder


def _read_hashes(path: Path) -> dict[str, str]:
    """The cache's record of each cached file's remote hash (``name<TAB>hash`` lines)."""
    if not path.exists():
        return {}
    return dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)


def _write_hashes(path: Path, known: dict[str, str]) -> None:
    path.write_text("".join(f"{name}\t{value}\n" for name, value in sorted(known.items())))


def _remote_hash(entry: dict) -> str:
    """What identifies a remote file's content: the Hub's LFS sha256 or blob id, else (a plain filesystem) its size
    and modification time."""
    lfs = entry.get("lfs") or {}
    return str(lfs.get("sha256") or entry.get("blob_id") or (entry.get("size"), entry.get("mtime") or entry.get("created")))


def local_run(text: str) -> str:
    """``text`` as a local run folder: an ``hf://`` path fetched and verified (:func:`fetch`), anything else as is."""
    return str(fetch(text)) if is_hub_path(text) else text


# -- atlas publish -----------------------------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    from precompute.cli import OneLineParser

    p = OneLineParser(prog=prog, description="Upload a finished run as a Hugging Face dataset repository with a "
                      "generated dataset card (the tables are verified first). Authentication: `hf auth login` or "
                      "$HF_TOKEN.")
    p.add_argument("run", type=Path, help="run folder written by the job (--out)")
    p.add_argument("--repo", required=True, help="dataset repository, USER/NAME")
    p.add_argument("--private", action="store_true", help="create the repository private")
    return p


def main(argv: list[str], prog: str = "atlas publish", api=None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        print(f"error: --repo {args.repo!r}: expected USER/NAME", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        url = publish(args.run, args.repo, api=api, private=args.private)
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"published {args.run} as {url} (https://huggingface.co/datasets/{args.repo})")
    return 0
