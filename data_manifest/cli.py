"""sslfer-manifest: verify, inspect, build and merge shard sets. Never imports torch."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from data_manifest.inspect_shards import format_report, inspect_path
from data_manifest.manifest import (
    MANIFEST_NAME, ManifestError, build_manifest, find_shard_files, load_manifest, save_manifest,
)
from data_manifest.merge import merge_shard_sets
from data_manifest.verify import ERROR, verify_shards
from sslfer_core import __version__
from sslfer_core.cpu_cores import available_cores
from sslfer_core.progress import Progress
from sslfer_core.shard_format import ShardFormatError

# Reading and sha256 release the GIL, so threads hash several shards at once; one per core keeps a
# 1 GB/s-per-core hash from being the bound on a fast file system.
JOBS_OPTION = click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                           help="Shards hashed at a time [default: the cores available].")
EXIT_CODES = "Exit codes: 0 all well; 1 problems found (or the operation was refused); 2 usage error."
MIB = float(1 << 20)


def one_line_errors(func):
    """Turn the library's expected failures into a one-line 'Error: ...' and exit code 1."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ManifestError, ShardFormatError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
    return wrapper


@click.group(help="Manifest of a shard set: verify, inspect, build, merge.", epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="sslfer-manifest")
def main():
    pass


@main.command(epilog=EXIT_CODES)
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--quick", is_flag=True, help="Check presence, sizes and HDF5 headers only; skip sha256.")
@JOBS_OPTION
@one_line_errors
def verify(directory: Path, quick: bool, jobs: int | None):
    """Check every shard in DIRECTORY against its manifest.json (sha256 unless --quick)."""
    manifest = load_manifest(directory)
    if not manifest.shards:
        raise click.ClickException(f"{directory / MANIFEST_NAME} lists no shards: nothing is verified")
    bar = Progress("verify", manifest.totals()["bytes"], unit=" MiB", scale=MIB)
    try:
        problems = verify_shards(directory, quick=quick, progress=bar.advance, manifest=manifest,
                                 jobs=jobs or available_cores())
    finally:
        bar.close()
    errors = [p for p in problems if p.severity == ERROR]
    for problem in problems:
        click.echo(str(problem), err=problem.severity != ERROR)
    checked = "sizes and headers" if quick else "sizes, headers and sha256"
    if errors:
        raise click.ClickException(
            f"{len({p.file for p in errors})} of {len(manifest.shards)} shards failed verification ({checked})")
    click.echo(f"OK: {len(manifest.shards)} shards, {manifest.totals()['frames']} frames ({checked})")


@main.command(epilog=EXIT_CODES)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--videos", is_flag=True, help="Also list every video (always included with --json).")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a PNG of the set: sampled faces per identity with their swaps and eye/mouth patches, "
                   "frame strips of sampled videos (video profile), frames per identity and failure reasons.")
@click.option("--sheet-identities", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Identities (rows) sampled for the sheet.")
@click.option("--sheet-samples", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Frames sampled per identity for the sheet.")
@click.option("--sheet-clips", type=click.IntRange(1, 64), default=6, show_default=True,
              help="Video profile: videos drawn as strips of consecutive frames.")
@click.option("--sheet-strip", type=click.IntRange(2, 32), default=8, show_default=True,
              help="Video profile: consecutive frames per strip.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sheet's draws.")
@one_line_errors
def inspect(path: Path, as_json: bool, videos: bool, sheet: Path | None, sheet_identities: int, sheet_samples: int,
            sheet_clips: int, sheet_strip: int, seed: int):
    """Counts, config, codecs and per-identity totals of a shard directory or of one shard file."""
    if sheet is not None and sheet.suffix.lower() != ".png":
        raise click.BadParameter(f"{sheet}: the sheet is a PNG; name it *.png", param_hint="--sheet")
    total = len(load_manifest(path).shards) if path.is_dir() else 1
    bar = Progress("inspect", total, unit=" shards")
    try:
        report = inspect_path(path, progress=bar.advance)
    finally:
        bar.close()
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else format_report(report, show_videos=videos))
    if sheet is not None:
        from data_manifest.sheet import write_sheet

        profile = (report["config"].get("prep_config") or {}).get("profile")
        rows = min(sheet_identities, report["totals"]["identities"]) + (
            min(sheet_clips, report["totals"]["videos"]) if profile == "video" else 0)
        bar = Progress("sheet", rows, unit=" rows")
        try:
            write_sheet(path, sheet, identities=sheet_identities, samples=sheet_samples, clips=sheet_clips,
                        strip=sheet_strip, seed=seed, progress=bar.advance)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        finally:
            bar.close()
        click.echo(f"sheet: {sheet}", err=True)


@main.command(epilog=EXIT_CODES)
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help=f"Replace an existing {MANIFEST_NAME}.")
@JOBS_OPTION
@one_line_errors
def build(directory: Path, force: bool, jobs: int | None):
    """Write DIRECTORY/manifest.json from the shards found there (hashes every shard)."""
    if (directory / MANIFEST_NAME).exists() and not force:
        raise click.ClickException(f"{directory / MANIFEST_NAME} exists; pass --force to rebuild it "
                                   "(a rebuild trusts the current bytes, so run verify first)")
    files = find_shard_files(directory)
    bar = Progress("build", sum(path.stat().st_size for path in files), unit=" MiB", scale=MIB)
    try:
        manifest = build_manifest(directory, files, jobs=jobs or available_cores(), progress=bar.advance)
    finally:
        bar.close()
    save_manifest(directory, manifest)
    t = manifest.totals()
    click.echo(f"wrote {directory / MANIFEST_NAME}: {t['shards']} shards, {t['videos']} videos, {t['frames']} frames")


@main.command(epilog=EXIT_CODES)
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--allow-mixed", is_flag=True,
              help="Merge parts whose prep settings differ (the manifest is then marked mixed).")
@click.option("--link/--copy", default=False, show_default=True,
              help="Hard-link shards (same filesystem) instead of copying them.")
@one_line_errors
def merge(out: Path, parts: tuple[Path, ...], allow_mixed: bool, link: bool):
    """Join the shard sets PARTS into the new directory OUT with one manifest.

    Shards of part i go to OUT/<ii>-<part name>/; failures.jsonl files are concatenated with a "part" field.
    Parts must agree on image size, patch size, swaps K, descriptor kind/dim/weights, dlib model, shard schema
    major version and prep config (unless --allow-mixed); a video id present in two parts is always refused.
    """
    total = sum(load_manifest(p).totals()["bytes"] for p in parts)
    bar = Progress("merge", total, unit=" MiB", scale=MIB)
    try:
        merged = merge_shard_sets(out, list(parts), allow_mixed=allow_mixed, link=link, progress=bar.advance)
    finally:
        bar.close()
    t = merged.totals()
    note = " (MIXED settings: see parts in the manifest)" if merged.mixed else ""
    click.echo(f"merged {len(parts)} parts into {out}: {t['shards']} shards, {t['videos']} videos, "
               f"{t['frames']} frames, {t['failures']} failures{note}")


if __name__ == "__main__":
    main()
