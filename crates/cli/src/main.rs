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
    /// Extract CNN embeddings of a dataset (one shard of it) to Parquet.
    Extract {
        /// The job file.
        job: PathBuf,
        /// Run shard INDEX/COUNT of the images, e.g. 0/4.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
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
    /// Fit the per-patch Gaussians of every channel subset from the extracted embeddings.
    Fit {
        /// The job file.
        job: PathBuf,
        /// Redo the fit even if it is marked done, or marked done by another configuration.
        #[arg(long)]
        force: bool,
    },
    /// Score every extracted image with every fitted model: anomaly maps and image scores.
    Score {
        /// The job file.
        job: PathBuf,
        /// Redo shards even if they are marked done.
        #[arg(long)]
        force: bool,
    },
    /// Print the resolved job (every default filled in, every path absolute) and its hash.
    Config {
        /// The job file.
        job: PathBuf,
    },
}

fn main() -> ExitCode {
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
        Command::Extract { job, shard, device, threads, skip_bad, force } => {
            let mut job = Job::load(&job)?;
            if let Some(device) = device {
                job.extract.device = device;
            }
            if let Some(threads) = threads {
                job.extract.threads = threads;
            }
            job.extract.skip_bad |= skip_bad;
            let reporter = progress::Bars::new(cli.quiet);
            let options = padim_extract::ExtractOptions { force };
            let summary = padim_extract::run_extract(&job, shard, &options, &reporter)
                .with_context(|| format!("extract shard {shard} of job `{}`", job.name))?;
            let verb = if summary.already_done { "already done" } else { "done" };
            write_stdout(&format!(
                "extract {shard} {verb}: {} images, {} skipped -> {}/{}",
                summary.images, summary.skipped, job.output, summary.embeddings_key
            ));
            Ok(())
        }
        Command::Fit { job, force } => {
            let job = Job::load(&job)?;
            let reporter = progress::Bars::new(cli.quiet);
            let summary = padim_fit::run_fit(&job, &padim_fit::FitOptions { force }, &reporter)
                .with_context(|| format!("fit of job `{}`", job.name))?;
            let verb = if summary.already_done { "already done" } else { "done" };
            write_stdout(&format!(
                "fit {verb}: {} training images -> {}",
                summary.n_train,
                summary.models.iter().map(|m| format!("{}/{m}", job.output)).collect::<Vec<_>>().join(", ")
            ));
            Ok(())
        }
        Command::Score { job, force } => {
            let job = Job::load(&job)?;
            let reporter = progress::Bars::new(cli.quiet);
            let summary = padim_score::run_score(&job, force, &reporter)
                .with_context(|| format!("score of job `{}`", job.name))?;
            write_stdout(&format!(
                "score done: {} images x {} models in {} shard(s), {} shard(s) already done -> {}/score",
                summary.images, summary.models, summary.shards_done, summary.shards_skipped, job.output
            ));
            Ok(())
        }
        Command::Config { job } => {
            let job = Job::load(&job)?;
            let value: serde_json::Value = serde_json::from_str(&job.to_canonical_json())?;
            write_stdout(&serde_json::to_string_pretty(&serde_json::json!({ "hash": job.hash(), "job": value }))?);
            Ok(())
        }
    }
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
