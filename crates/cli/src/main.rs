//! `padim`: parses arguments and the job file, sets up logging and progress bars, and calls the
//! stage crates. No algorithm lives here.

mod progress;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use padim_core::config::DeviceChoice;
use padim_core::{Job, Shard};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "padim", version, about = "PaDiM anomaly detection: extract, fit, score, report")]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Assign the dataset's images to seeded, disjoint train / calibration / test splits.
    Split {
        /// The job file.
        job: PathBuf,
        /// Redo the split even if it is marked done, or marked done by another configuration.
        #[arg(long)]
        force: bool,
    },
    /// Extract CNN embeddings of a dataset (one shard of it) to Parquet.
    Extract {
        /// The job file.
        job: PathBuf,
        #[command(flatten)]
        sharding: Sharding,
        /// Where the backbone runs (overrides the job's `extract.device`).
        #[arg(long)]
        device: Option<DeviceChoice>,
        /// CPU threads for the backbone (overrides `extract.threads`; 0 = all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Record bad images as skipped and go on (overrides `extract.skip-bad`).
        #[arg(long)]
        skip_bad: bool,
        /// Redo the shard even if it is marked done, or marked done by another configuration.
        #[arg(long)]
        force: bool,
    },
    /// Fit the per-patch Gaussians of every channel subset from the extracted embeddings. With a
    /// shard (flag or array-job variable), only accumulate that part of the extract shards; a run
    /// without one merges every part and writes the models.
    Fit {
        /// The job file.
        job: PathBuf,
        #[command(flatten)]
        sharding: Sharding,
        /// Redo the fit even if it is marked done, or marked done by another configuration.
        #[arg(long)]
        force: bool,
    },
    /// Score every extracted image with every fitted model: anomaly maps and image scores.
    Score {
        /// The job file.
        job: PathBuf,
        #[command(flatten)]
        sharding: Sharding,
        /// Redo shards even if they are marked done.
        #[arg(long)]
        force: bool,
    },
    /// Calibrate on the calibration split, evaluate on the test split, and write pictures, tables
    /// and the HTML report.
    Report {
        /// The job file.
        job: PathBuf,
        /// Redo the report even if it is marked done.
        #[arg(long)]
        force: bool,
    },
    /// Run every stage of the job on this machine: split, extract, fit, score, report. Finished
    /// stages are skipped.
    Run {
        /// The job file.
        job: PathBuf,
        /// CPU threads for the backbone (overrides `extract.threads`; 0 = all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Where the backbone runs (overrides the job's `extract.device`).
        #[arg(long)]
        device: Option<DeviceChoice>,
    },
    /// Print the resolved job (every default filled in, every path absolute) and its hash.
    Config {
        /// The job file.
        job: PathBuf,
    },
}

/// Which shard this process runs: `--shard`, else the array-job variable of Slurm, AWS Batch or
/// Kubernetes (with `--shards` for the engines that do not give the count).
#[derive(clap::Args)]
struct Sharding {
    /// Run shard INDEX/COUNT, e.g. 0/4 (default: from the array-job environment, else the whole).
    #[arg(long)]
    shard: Option<Shard>,
    /// The number of shards of an AWS Batch or Kubernetes array job.
    #[arg(long, env = "PADIM_SHARDS")]
    shards: Option<u32>,
}

impl Sharding {
    /// The explicit shard, or the one of the array-job environment, or `None`.
    fn resolve(&self) -> Result<Option<Shard>> {
        if let Some(shard) = self.shard {
            return Ok(Some(shard));
        }
        let found = padim_core::shard::from_environment(|name| std::env::var(name).ok(), self.shards)?;
        if let Some((shard, variable)) = found {
            tracing::info!(%shard, variable, "shard from the array-job environment");
            return Ok(Some(shard));
        }
        Ok(None)
    }
}

/// padim parallelises the linear algebra over patches (rayon) and calls BLAS on small matrices from
/// every worker; OpenBLAS's own threads would then oversubscribe the cores (measured: the fit takes
/// twice as long). OpenBLAS reads its thread count once, when the library loads, so the binary
/// re-executes itself with `OPENBLAS_NUM_THREADS=1` unless the variable is already set.
fn single_threaded_blas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_some() {
        return;
    }
    if let Ok(exe) = std::env::current_exe() {
        let error =
            std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OPENBLAS_NUM_THREADS", "1").exec();
        // `exec` returns only when it failed: go on with OpenBLAS's default.
        write_stderr(&format!("warning: cannot re-execute with OPENBLAS_NUM_THREADS=1 ({error})"));
    }
}

fn main() -> ExitCode {
    single_threaded_blas();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    padim_extract::tune_allocator();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain, outermost first: what padim was doing, then why it failed.
            let mut message = format!("error: {error}");
            for cause in error.chain().skip(1) {
                message.push_str(&format!("\n  caused by: {cause}"));
            }
            write_stderr(&message);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Split { job, force } => {
            let job = Job::load(&job)?;
            let reporter = progress::Bars::new(cli.quiet);
            let summary = padim_extract::run_split(&job, force, &reporter)
                .with_context(|| format!("split of job `{}`", job.name))?;
            let verb = done_verb(summary.already_done);
            let counts: Vec<String> = summary.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            write_stdout(&format!(
                "split {verb}: {}; {} unused -> {}/{}",
                counts.join(", "),
                summary.unused,
                job.output,
                padim_extract::split::MANIFEST_KEY
            ));
            Ok(())
        }
        Command::Extract { job, sharding, device, threads, skip_bad, force } => {
            let shard = sharding.resolve()?.unwrap_or(Shard::ALL);
            let mut job = load_with_overrides(&job, device, threads)?;
            job.extract.skip_bad |= skip_bad;
            let reporter = progress::Bars::new(cli.quiet);
            let options = padim_extract::ExtractOptions { force };
            let summary = padim_extract::run_extract(&job, shard, &options, &reporter)
                .with_context(|| format!("extract shard {shard} of job `{}`", job.name))?;
            let verb = done_verb(summary.already_done);
            write_stdout(&format!(
                "extract {shard} {verb}: {} images, {} skipped -> {}/{}",
                summary.images, summary.skipped, job.output, summary.embeddings_key
            ));
            Ok(())
        }
        Command::Fit { job, sharding, force } => {
            let shard = sharding.resolve()?;
            let job = Job::load(&job)?;
            let reporter = progress::Bars::new(cli.quiet);
            let summary = padim_fit::run_fit(&job, &padim_fit::FitOptions { force, shard }, &reporter)
                .with_context(|| format!("fit of job `{}`", job.name))?;
            if let Some(shard) = shard {
                write_stdout(&format!(
                    "fit {shard} done: {} training images in {} extract shard(s); run `padim fit JOB` to merge",
                    summary.n_train, summary.partials
                ));
                return Ok(());
            }
            let verb = done_verb(summary.already_done);
            write_stdout(&format!(
                "fit {verb}: {} training images -> {}",
                summary.n_train,
                summary.models.iter().map(|m| format!("{}/{m}", job.output)).collect::<Vec<_>>().join(", ")
            ));
            Ok(())
        }
        Command::Score { job, sharding, force } => {
            let shard = sharding.resolve()?;
            let job = Job::load(&job)?;
            let reporter = progress::Bars::new(cli.quiet);
            let summary = padim_score::run_score(&job, force, shard, &reporter)
                .with_context(|| format!("score of job `{}`", job.name))?;
            write_stdout(&format!(
                "score done: {} images x {} models in {} shard(s), {} shard(s) already done -> {}/score",
                summary.images, summary.models, summary.shards_done, summary.shards_skipped, job.output
            ));
            Ok(())
        }
        Command::Report { job, force } => {
            let job = Job::load(&job)?;
            report(&job, force, cli.quiet)
        }
        Command::Run { job, threads, device } => {
            let job = load_with_overrides(&job, device, threads)?;
            let reporter = progress::Bars::new(cli.quiet);
            if job.split.is_some() {
                let summary = padim_extract::run_split(&job, false, &reporter)
                    .with_context(|| format!("split of job `{}`", job.name))?;
                write_stdout(&format!(
                    "split {}: {} images, {} unused",
                    done_verb(summary.already_done),
                    summary.counts.values().sum::<u64>(),
                    summary.unused
                ));
            }
            let shard = Shard::ALL;
            let summary = padim_extract::run_extract(&job, shard, &padim_extract::ExtractOptions::default(), &reporter)
                .with_context(|| format!("extract of job `{}`", job.name))?;
            write_stdout(&format!(
                "extract {}: {} images, {} skipped",
                done_verb(summary.already_done),
                summary.images,
                summary.skipped
            ));
            let summary = padim_fit::run_fit(&job, &padim_fit::FitOptions::default(), &reporter)
                .with_context(|| format!("fit of job `{}`", job.name))?;
            write_stdout(&format!(
                "fit {}: {} training images, {} model(s)",
                done_verb(summary.already_done),
                summary.n_train,
                summary.models.len()
            ));
            let summary = padim_score::run_score(&job, false, None, &reporter)
                .with_context(|| format!("score of job `{}`", job.name))?;
            write_stdout(&format!(
                "score {}: {} images x {} model(s)",
                done_verb(summary.shards_done == 0),
                summary.images,
                summary.models
            ));
            report(&job, false, cli.quiet)
        }
        Command::Config { job } => {
            let job = Job::load(&job)?;
            let value: serde_json::Value = serde_json::from_str(&job.to_canonical_json())?;
            write_stdout(&serde_json::to_string_pretty(&serde_json::json!({ "hash": job.hash(), "job": value }))?);
            Ok(())
        }
    }
}

fn done_verb(already_done: bool) -> &'static str {
    if already_done { "already done" } else { "done" }
}

/// The job file with the command line's `--device` and `--threads` applied.
fn load_with_overrides(path: &std::path::Path, device: Option<DeviceChoice>, threads: Option<usize>) -> Result<Job> {
    let mut job = Job::load(path)?;
    if let Some(device) = device {
        job.extract.device = device;
    }
    if let Some(threads) = threads {
        job.extract.threads = threads;
    }
    Ok(job)
}

fn report(job: &Job, force: bool, quiet: bool) -> Result<()> {
    let reporter = progress::Bars::new(quiet);
    let summary =
        padim_report::run_report(job, force, &reporter).with_context(|| format!("report of job `{}`", job.name))?;
    let verb = done_verb(summary.already_done);
    let mut text = format!("report {verb} -> {}/report/report.html", job.output);
    if let Some(h) = summary.headline() {
        text.push_str(&format!(
            "\n{} ({} score, {:?} threshold {:.4}): calibration AUROC {:.4}; test AUROC {:.4}, accuracy {:.4}, \
             F1 {:.4} (TP {} FP {} TN {} FN {})",
            h.model,
            h.score,
            h.threshold_rule,
            h.threshold,
            h.calibration.auroc,
            h.test.auroc,
            h.test.accuracy,
            h.test.f1,
            h.test.confusion.tp,
            h.test.confusion.fp,
            h.test.confusion.tn,
            h.test.confusion.fn_
        ));
    }
    if let Some(p) = &summary.pixel {
        text.push_str(&format!("\npixel AUROC {:.4}, PRO {:.4} ({} images)", p.auroc, p.pro, p.images));
    }
    write_stdout(&text);
    Ok(())
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[allow(clippy::print_stdout)]
fn write_stdout(text: &str) {
    println!("{text}");
}

#[allow(clippy::print_stderr)]
fn write_stderr(text: &str) {
    eprintln!("{text}");
}
