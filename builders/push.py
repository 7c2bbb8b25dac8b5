"""`turnphase push DIR REPO_ID`: publish a validated dataset folder as a Hub dataset repository.

    turnphase push data/smollm2 alice/turnphase-smollm2-135m-instruct
    turnphase push data/smollm2 alice/turnphase-smollm2-135m-instruct --private --revision v2

One repository per model variant, named `<namespace>/turnphase-<model name>` by convention
(`card.variant_repo_name`). The steps, each safe to repeat:

1. validate the folder; a broken one is refused before anything is sent;
2. render the card for this repo id (its loading examples name the repo) into the folder, so the
   local folder and the repository hold the same files;
3. create the dataset repo if it does not exist (private on request), and the branch `revision`
   if it does not exist;
4. upload the shards, deleting shards of this dataset's configs that the folder no longer has
   (a rebuilt dataset with fewer shards must not keep stale ones under the card's globs);
5. upload the provenance and the card last, so a repository with a card is a finished push.

Uploads go through `HfApi.upload_folder`. With `hf_xet` installed (huggingface_hub's default) it
is the streamed multi-commit pipeline, which resumes an interrupted upload when the same call runs
again (committed files are skipped, uploaded chunks deduplicated). Without it (or with
HF_HUB_DISABLE_XET=1) it uses the LFS protocol, where objects already stored are not sent again.
Either way: rerun the same command to resume.

The token comes from `huggingface_hub.get_token()` (HF_TOKEN or `hf auth login`) unless given. It
is handed to huggingface_hub only; it is never printed, logged or written, and error messages are
scrubbed of it before they are shown.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from turnphase.builders import card, schema, writer
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.lock import folder_lock
from turnphase.builders.provenance import read_provenance, turnphase_version
from turnphase.builders.validate import validate

REPO_TYPE = "dataset"
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")

try:  # huggingface_hub's HTTP client; its connection errors are not HfHubHTTPError
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover - another huggingface_hub version
    _TransportError = OSError


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _hub_error(e: BaseException) -> BaseException | None:
    """The HTTP or connection error behind `e` (huggingface_hub wraps failed LFS uploads), if any."""
    while e is not None:
        if isinstance(e, (HfHubHTTPError, _TransportError)):
            return e
        e = e.__cause__
    return None


def push_folder(
    folder: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Validate `folder` and upload it to the dataset repo `repo_id`; returns the repo's URL.

    private: create the repo private; an existing public repo is refused rather than published to.
    revision: the branch to push to (created from `main` if missing); None means `main`.
    token: a Hugging Face token; None uses `huggingface_hub.get_token()`.
    Raises TurnphaseError on an invalid folder or repo id, a missing token, or a refusal by the Hub.
    The folder is locked meanwhile: a build cannot write into it during the push.
    """
    folder = Path(folder)
    if not _REPO_ID_RE.match(repo_id):
        raise TurnphaseError(
            f"repo id {repo_id!r} must be NAMESPACE/NAME, e.g. "
            f"alice/{card.variant_repo_name('HuggingFaceTB/SmolLM2-135M-Instruct')}"
        )
    if not folder.is_dir():
        raise TurnphaseError(f"{folder}: no such dataset folder")
    with folder_lock(folder, "turnphase push"):
        return _push(folder, repo_id, private=private, revision=revision, token=token)


def _push(folder: Path, repo_id: str, *, private: bool, revision: str | None, token: str | None) -> str:
    problems = validate(folder)  # the shards' sha256 included: what is uploaded is what was built
    if problems:
        raise TurnphaseError(
            f"{folder} is not a valid dataset, nothing pushed ({len(problems)} problem(s); "
            f"`turnphase validate {folder}` lists them): {problems[0]}"
        )
    token = token or get_token()
    if not token:
        raise TurnphaseError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    provenance = read_provenance(folder)
    api = HfApi(token=token, library_name="turnphase", library_version=turnphase_version())
    try:
        _ensure_repo(api, repo_id, private=private, revision=revision)
        writer.atomic_write_bytes(
            folder / schema.CARD_FILE, card.render_card(provenance, repo_id, revision).encode()
        )
        model = provenance["model"]["id"]
        configs = schema.config_names(provenance["layers"])
        api.upload_folder(
            repo_id=repo_id,
            repo_type=REPO_TYPE,
            folder_path=folder,
            revision=revision,
            allow_patterns=[schema.data_files_glob(c) for c in configs],
            delete_patterns=[f"{c}/*" for c in (schema.CONVERSATIONS, schema.TOKENS, "layer_*")],
            commit_message=f"turnphase {turnphase_version()}: shards of {', '.join(configs)} ({model})",
        )
        api.upload_folder(
            repo_id=repo_id,
            repo_type=REPO_TYPE,
            folder_path=folder,
            revision=revision,
            allow_patterns=[schema.PROVENANCE_FILE, schema.CARD_FILE],
            commit_message=f"turnphase {turnphase_version()}: dataset card and provenance ({model})",
        )
    except (HfHubHTTPError, _TransportError, RuntimeError) as e:
        cause = _hub_error(e)
        if cause is None:
            raise
        detail = str(cause) if cause is e else f"{e} {cause}"
        raise TurnphaseError(
            f"push to {repo_id} failed, rerun to resume: {_scrub(' '.join(detail.split()), token)}"
        ) from None
    url = f"{api.endpoint}/datasets/{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def _ensure_repo(api: HfApi, repo_id: str, *, private: bool, revision: str | None) -> None:
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    if private and not api.repo_info(repo_id, repo_type=REPO_TYPE).private:
        raise TurnphaseError(
            f"{repo_id} already exists and is public; make it private on the Hub first, "
            "or push without --private"
        )
    if revision and revision != "main":
        api.create_branch(repo_id, repo_type=REPO_TYPE, branch=revision, exist_ok=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="dataset folder written by `turnphase build`")
    p.add_argument(
        "repo_id",
        help="dataset repo NAMESPACE/NAME; by convention NAMESPACE/turnphase-<model name>, "
        "e.g. alice/turnphase-smollm2-135m-instruct",
    )
    p.add_argument("--private", action="store_true", help="create the repo private (refused if it is public)")
    p.add_argument("--revision", default=None, help="branch to push to, created if missing (default: main)")


def run(args: argparse.Namespace) -> int:
    url = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision)
    logging.getLogger(__name__).info("pushed %s to %s", args.folder, url)
    return 0
