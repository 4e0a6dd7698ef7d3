"""The ``mnclglf`` command: thin click wrappers over the library, usable with or without DVC.

Every user-fixable problem surfaces as one line ``error: …`` and exit status 1 (2 for
command-line usage errors), never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mnclglf import config, paths
from mnclglf.errors import UserError

PARAMS_OPTION = click.option("--params", "params_file", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="Parameter file (the profile) to read.")
QUIET_OPTION = click.option("--quiet", is_flag=True, help="No progress bar.")


class OneLineErrors(click.Group):
    """A click group whose every failure is one line on stderr and a non-zero exit status."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reproduce the MNCLGLF paper: download → pretrain → linear-eval → tabulate."""


@main.command()
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset to prepare.")
@click.option("--root", default=None, help="Data folder (default: data_root of the params file, else data/).")
@click.option("--source", default=None, metavar="URL_OR_PATH",
              help="Mirror URL or a local archive already downloaded (default: the official URL, or $MNCLGLF_MIRROR).")
@click.option("--md5", default=None, metavar="HEX", help="Override the expected MD5 of the archive.")
@PARAMS_OPTION
@QUIET_OPTION
def download(dataset: str, root: str | None, source: str | None, md5: str | None, params_file: str, quiet: bool) -> None:
    """Download, verify and prepare DATASET as uint8 tensors under ROOT/DATASET/."""
    from mnclglf.data.prepare import prepare

    raw = config.read_params(params_file) if Path(params_file).is_file() else {}
    digits = config.digits_config(raw)
    out = prepare(dataset, root or raw.get("data_root", "data"), source=source, md5=md5, digits_size=digits.size,
                  digits_test_fraction=digits.test_fraction, digits_seed=digits.split_seed, progress=not quiet)
    click.echo(f"prepared {dataset} in {out}")


@main.command()
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset to pretrain on.")
@click.option("--method", required=True, type=click.Choice((*config.SSL_METHODS, "random-init")),
              help="Self-supervised method (random-init saves the untrained encoder).")
@PARAMS_OPTION
@QUIET_OPTION
def pretrain(dataset: str, method: str, params_file: str, quiet: bool) -> None:
    """Pretrain METHOD on DATASET; writes runs/DATASET/METHOD/pretrain/encoder.pt and metrics."""
    from mnclglf.train.pretrain import pretrain as run, save_random_init

    cfg = config.run_config(config.read_params(params_file), dataset, method)
    metrics = paths.metrics_dir(dataset, method) / "pretrain.json"
    if method == "random-init":
        save_random_init(cfg, paths.pretrain_dir(dataset, method), metrics)
    else:
        summary = run(cfg, paths.pretrain_dir(dataset, method), paths.ckpt_dir(dataset, method), metrics,
                      progress=not quiet)
        click.echo(f"{method}@{dataset}: final loss {summary['final_loss']}, "
                   f"collapse monitor min/initial {summary['embedding_std_min_ratio']}")
    click.echo(f"encoder: {paths.encoder_path(dataset, method)}")


@main.command()
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset to train on.")
@PARAMS_OPTION
@QUIET_OPTION
def supervised(dataset: str, params_file: str, quiet: bool) -> None:
    """Train the supervised ResNet-18 baseline end to end; writes metrics/DATASET/supervised/supervised.json."""
    from mnclglf.train.supervised import train_supervised

    cfg = config.run_config(config.read_params(params_file), dataset, "supervised")
    result = train_supervised(cfg, paths.pretrain_dir(dataset, "supervised"), paths.ckpt_dir(dataset, "supervised"),
                              paths.metrics_dir(dataset, "supervised") / "supervised.json", progress=not quiet)
    click.echo(f"supervised@{dataset}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}")


@main.command("linear-eval")
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset of the encoder.")
@click.option("--method", required=True, type=click.Choice((*config.SSL_METHODS, "random-init")),
              help="Method whose encoder to evaluate.")
@click.option("--encoder", "encoder_file", default=None, type=click.Path(dir_okay=False),
              help="Encoder file (default: runs/DATASET/METHOD/pretrain/encoder.pt).")
@PARAMS_OPTION
@QUIET_OPTION
def linear_eval(dataset: str, method: str, encoder_file: str | None, params_file: str, quiet: bool) -> None:
    """Train a linear classifier on the frozen encoder; writes top-1/top-5 to metrics/DATASET/METHOD/linear.json."""
    from mnclglf.train.linear_eval import linear_eval as run

    raw = config.read_params(params_file)
    cfg = config.linear_eval_config(raw, dataset)
    seed = config.run_config(raw, dataset, method).seed
    result = run(Path(encoder_file) if encoder_file else paths.encoder_path(dataset, method), cfg,
                 raw.get("data_root", "data"), seed, paths.linear_dir(dataset, method),
                 paths.metrics_dir(dataset, method) / "linear.json", progress=not quiet)
    click.echo(f"{method}@{dataset}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}")


@main.command()
@click.option("--profile", required=True, help="Profile whose datasets to tabulate (a key of `profiles`).")
@click.option("--paper", "paper_file", default="results/paper.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The paper's numbers.")
@PARAMS_OPTION
def tabulate(profile: str, paper_file: str, params_file: str) -> None:
    """Write Table 3 (CSV and Markdown) for PROFILE and print it."""
    from rich.console import Console
    from rich.table import Table

    from mnclglf.report.tables import TABLE3_HEADER, tabulate as run

    raw = config.read_params(params_file)
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise UserError(f"--profile {profile!r}: not in params `profiles`; allowed: {', '.join(profiles)}")
    prof = profiles[profile]
    rows, csv_path = run(paths.METRICS, list(prof["datasets"]), Path(paper_file), Path(prof["results"]), profile)
    table = Table(title=f"Table 3 — {profile} profile")
    for col in TABLE3_HEADER:
        table.add_column(col, justify="right" if col not in ("dataset", "method", "variant") else "left")
    for r in rows:
        table.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else (r[c] or "") for c in TABLE3_HEADER])
    Console().print(table)
    click.echo(f"table: {csv_path} (and {csv_path.with_suffix('.md')})")
