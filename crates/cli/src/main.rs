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
    /// Hash the dataset's images into the manifest every later stage works on and, with a
    /// `[split]`, assign them to seeded, disjoint train / calibration / test splits.
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
        /// Score only part J/M of the fit's models (in their order), e.g. 0/3: a sweep's experiments
        /// split across tasks. The report needs every part of every extract shard; 0/1 is the
        /// whole. An array-job template can set it through PADIM_MODELS.
        #[arg(long, value_name = "J/M", env = "PADIM_MODELS")]
        models: Option<Shard>,
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
    /// Write a job file for a folder of images: labels from its sub-folders, the normal label from
    /// their names, masks found beside the images, the recipe's split sizes scaled to the counts and
    /// the main job's configuration. Prints what it guessed and why.
    #[command(after_help = "Example:\n  padim init data/bottles --normal good      # writes bottles.toml\n  \
                            padim run bottles.toml                      # to runs/bottles/report/report.html")]
    Init {
        /// The folder of images: one sub-folder per label (images at any depth below it).
        dir: PathBuf,
        /// The job file to write (default: NAME.toml in the current folder, NAME the folder's name).
        #[arg(long, value_name = "JOB")]
        output: Option<PathBuf>,
        /// A normal (defect-free) label; repeat for several (default: the labels whose names say so:
        /// good, ok, normal, negative, free, ...).
        #[arg(long, value_name = "LABEL")]
        normal: Vec<String>,
        /// The EfficientNet-Lite1 weights (default: weights/efficientnet-lite1.safetensors, made by
        /// `make weights`).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// The run location the job writes to (default: runs/NAME).
        #[arg(long, value_name = "DIR")]
        run_dir: Option<PathBuf>,
        /// Overwrite the job file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Run every stage of the job on this machine: split, extract, fit, score, report. Finished
    /// stages are skipped.
    #[command(
        after_help = "Examples:\n  padim run configs/concrete-crack.toml     # the main job, to runs/concrete-crack/report/report.html\n  \
                            padim run mine.toml --threads 4             # a job made by `padim init`"
    )]
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
    /// Score new images with a model bundle (`report/bundle.safetensors` of a run): per image the
    /// normalised score, the verdict and optionally the heatmap overlay. Bad images get an error row
    /// and do not stop the others (unless --fail-fast).
    #[command(
        after_help = "Examples:\n  padim predict --model runs/concrete-crack/report/bundle.safetensors new-images/\n  \
                            padim predict --model bundle.safetensors --output predictions.csv --overlays heatmaps/ 's3://bucket/incoming/'"
    )]
    Predict {
        /// The bundle: a path or URL.
        #[arg(long)]
        model: PathBuf,
        /// Images: files, folders (searched at any depth), shell patterns, or object-store URLs
        /// (an object, or every image under a prefix).
        #[arg(required = true)]
        inputs: Vec<String>,
        /// The backbone weights (default: where the run read them); their SHA-256 must match.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// The table: a file or URL ending in .csv, .parquet or .jsonl (default: JSON lines on stdout).
        #[arg(long)]
        output: Option<String>,
        /// Write an overlay PNG per image into this folder (or URL prefix).
        #[arg(long)]
        overlays: Option<String>,
        /// Images per network batch.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Where the backbone runs.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// CPU threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Stop at the first image that cannot be scored.
        #[arg(long)]
        fail_fast: bool,
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

/// Rust's allocations (embeddings batches, statistics, models, maps: hundreds of megabytes each)
/// go to mimalloc, which reuses freed memory instead of unmapping and page-faulting it again as
/// glibc does for blocks this large from worker threads (measured: fit 3.4 s -> 1.7 s for one
/// 100-channel model; see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    padim_fit::single_threaded_blas();
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
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Exit status of a failure, for a scheduler's retry policy (docs/operations.md "Exit codes"): storage that
/// failed after its retries may work later; bad configuration or input will not.
const EXIT_TRANSIENT: u8 = 75; // sysexits' EX_TEMPFAIL
const EXIT_INPUT: u8 = 2; // as clap's usage errors: fix the job, the data or the command
const EXIT_OTHER: u8 = 1;

/// The exit status of `error`: storage that failed after its retries anywhere in the chain is
/// transient (the stages keep a storage error as the source of theirs, whatever they were doing);
/// otherwise the first padim error in the chain decides; an error of no padim stage (an unexpected
/// one) is 1.
fn exit_code(error: &anyhow::Error) -> u8 {
    let transient_storage = error.chain().any(|cause| {
        cause.downcast_ref::<padim_store::StoreError>().is_some_and(padim_store::StoreError::is_transient)
    });
    if transient_storage {
        return EXIT_TRANSIENT;
    }
    for cause in error.chain() {
        if let Some(transient) = transient(cause) {
            return if transient { EXIT_TRANSIENT } else { EXIT_INPUT };
        }
    }
    EXIT_OTHER
}

/// For an error of a padim library: whether a rerun later may succeed. `None` for other errors.
fn transient(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    use padim_store::StoreError;
    let input = |is: bool| is.then_some(false);
    cause
        .downcast_ref::<StoreError>()
        .map(StoreError::is_transient)
        .or_else(|| cause.downcast_ref::<padim_extract::ExtractError>().map(|e| e.is_transient()))
        .or_else(|| cause.downcast_ref::<padim_split::SplitStageError>().map(|e| e.is_transient()))
        .or_else(|| cause.downcast_ref::<padim_fit::FitError>().map(|e| e.is_transient()))
        .or_else(|| cause.downcast_ref::<padim_score::ScoreStageError>().map(|e| e.is_transient()))
        .or_else(|| cause.downcast_ref::<padim_report::ReportError>().map(|e| e.is_transient()))
        .or_else(|| cause.downcast_ref::<padim_predict::PredictError>().and_then(|e| e.is_transient()))
        .or_else(|| input(cause.downcast_ref::<padim_core::ConfigError>().is_some()))
        .or_else(|| input(cause.downcast_ref::<padim_core::DatasetError>().is_some()))
        .or_else(|| input(cause.downcast_ref::<padim_core::shard::ShardError>().is_some()))
        .or_else(|| input(cause.downcast_ref::<padim_init::InitError>().is_some()))
}

fn run(cli: Cli) -> Result<()> {
    let reporter = progress::Bars::new(cli.quiet);
    match cli.command {
        Command::Split { job, force } => split(&Job::load(&job)?, force, &reporter),
        Command::Extract { job, sharding, device, threads, skip_bad, force } => {
            let mut job = load_with_overrides(&job, device, threads)?;
            job.extract.skip_bad |= skip_bad;
            let options = padim_extract::ExtractOptions { shard: sharding.resolve()?.unwrap_or(Shard::ALL), force };
            extract(&job, &options, &reporter)
        }
        Command::Fit { job, sharding, force } => {
            fit(&Job::load(&job)?, &padim_fit::FitOptions { force, shard: sharding.resolve()? }, &reporter)
        }
        Command::Score { job, sharding, models, force } => {
            let options = padim_score::ScoreOptions { force, shard: sharding.resolve()?, models };
            score(&Job::load(&job)?, &options, &reporter)
        }
        Command::Report { job, force } => {
            let job = Job::load(&job)?;
            let summary = padim_report::run_report(&job, &padim_report::ReportOptions { force }, &reporter)
                .with_context(|| format!("report of job `{}`", job.name))?;
            write_stdout(&report_text(&job, &summary));
            Ok(())
        }
        Command::Run { job, threads, device } => run_all(&load_with_overrides(&job, device, threads)?, &reporter),
        Command::Predict { model, inputs, weights, output, overlays, batch_size, device, threads, fail_fast } => {
            predict(padim_predict::PredictOptions {
                model,
                weights,
                inputs,
                output,
                overlays,
                batch_size,
                device,
                threads,
                fail_fast,
            })
        }
        Command::Init { dir, output, normal, weights, run_dir, force } => init(
            padim_init::InitOptions {
                job_path: output.unwrap_or_else(|| PathBuf::from(format!("{}.toml", padim_init::job_name(&dir)))),
                dir,
                normal,
                weights,
                output: run_dir,
            },
            force,
        ),
        Command::Config { job } => {
            let job = Job::load(&job)?;
            let value: serde_json::Value = serde_json::from_str(&job.to_canonical_json())?;
            write_stdout(&serde_json::to_string_pretty(&serde_json::json!({ "hash": job.hash(), "job": value }))?);
            Ok(())
        }
    }
}

fn split(job: &Job, force: bool, reporter: &progress::Bars) -> Result<()> {
    for job in job.variants() {
        let summary = padim_split::run_split(&job, &padim_split::SplitOptions { force }, reporter)
            .with_context(|| format!("split of job `{}`", job.name))?;
        let counts: Vec<String> = summary.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write_stdout(&format!(
            "split {}: {}; {} unused -> {}/{}",
            done_verb(summary.already_done),
            counts.join(", "),
            summary.unused,
            job.output,
            padim_store::layout::split::MANIFEST
        ));
    }
    Ok(())
}

fn extract(job: &Job, options: &padim_extract::ExtractOptions, reporter: &progress::Bars) -> Result<()> {
    let shard = options.shard;
    for job in job.variants() {
        let summary = padim_extract::run_extract(&job, options, reporter)
            .with_context(|| format!("extract shard {shard} of job `{}`", job.name))?;
        write_stdout(&format!(
            "extract {shard} {}: {} images, {} skipped -> {}/{}",
            done_verb(summary.already_done),
            summary.images,
            summary.skipped,
            job.output,
            summary.embeddings_key
        ));
    }
    Ok(())
}

fn fit(job: &Job, options: &padim_fit::FitOptions, reporter: &progress::Bars) -> Result<()> {
    for job in job.variants() {
        let summary =
            padim_fit::run_fit(&job, options, reporter).with_context(|| format!("fit of job `{}`", job.name))?;
        if let Some(shard) = options.shard {
            write_stdout(&format!(
                "fit {shard} done: {} training images in {} extract shard(s); run `padim fit JOB` to merge",
                summary.n_train, summary.partials
            ));
            continue;
        }
        write_stdout(&format!(
            "fit {}: {} training images -> {}",
            done_verb(summary.already_done),
            summary.n_train,
            summary.models.iter().map(|m| format!("{}/{m}", job.output)).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

fn score(job: &Job, options: &padim_score::ScoreOptions, reporter: &progress::Bars) -> Result<()> {
    for job in job.variants() {
        let summary =
            padim_score::run_score(&job, options, reporter).with_context(|| format!("score of job `{}`", job.name))?;
        let passes = match summary.passes {
            1 => String::new(),
            n => format!(" ({n} passes per shard within score.memory-budget-gib)"),
        };
        write_stdout(&format!(
            "score done: {} images x {} models{passes} in {} shard(s), {} shard(s) already done -> {}/score",
            summary.images, summary.models, summary.shards_done, summary.shards_skipped, job.output
        ));
    }
    Ok(())
}

/// `padim run`: every stage in order, a line as each finishes (with a sweep over backbones, each
/// line names its backbone's run), then the report's headline.
fn run_all(job: &Job, reporter: &progress::Bars) -> Result<()> {
    let several = job.variants().len() > 1;
    let mut print = |run: &Job, done: padim_pipeline::StageDone| {
        use padim_pipeline::StageDone;
        let tag = if several { format!("{}: ", run.backbone.kind.name()) } else { String::new() };
        write_stdout(&match done {
            StageDone::Split(s) => format!(
                "{tag}split {}: {} images, {} unused",
                done_verb(s.already_done),
                s.counts.values().sum::<u64>(),
                s.unused
            ),
            StageDone::Extract(s) => {
                format!("{tag}extract {}: {} images, {} skipped", done_verb(s.already_done), s.images, s.skipped)
            }
            StageDone::Fit(s) => format!(
                "{tag}fit {}: {} training images, {} model(s)",
                done_verb(s.already_done),
                s.n_train,
                s.models.len()
            ),
            StageDone::Score(s) => {
                format!("{tag}score {}: {} images x {} model(s)", done_verb(s.shards_done == 0), s.images, s.models)
            }
        });
    };
    let summary = padim_pipeline::run_job(job, reporter, &mut print)?;
    write_stdout(&report_text(job, &summary));
    Ok(())
}

/// `padim init`: the job for a folder, written (never over an existing file unless forced) with
/// what was guessed.
fn init(options: padim_init::InitOptions, force: bool) -> Result<()> {
    let job = &options.job_path;
    let plan = padim_init::plan(&options).with_context(|| format!("init for {}", options.dir.display()))?;
    padim_init::write_job(&plan, job, force)?;
    let mut text = format!("wrote {} for {}:", job.display(), options.dir.display());
    for guess in &plan.guesses {
        text.push_str(&format!("\n  {:<9} {}", format!("{}:", guess.what), guess.text));
    }
    text.push_str(&format!("\nnext: padim run {}", job.display()));
    write_stdout(&text);
    Ok(())
}

fn predict(options: padim_predict::PredictOptions) -> Result<()> {
    let mut warn = |error: &padim_predict::PredictError| write_stderr(&format!("warning: {error}"));
    let summary = padim_predict::run_predict(&options, &mut warn)?;
    if let Some(table) = &summary.stdout {
        use std::io::Write;
        std::io::stdout().write_all(table)?;
    }
    write_stderr(&format!(
        "predict: {} images, {} anomalous, {} could not be scored (model `{}`, threshold {:.4})",
        summary.rows.len(),
        summary.anomalous,
        summary.failed,
        summary.model,
        summary.threshold
    ));
    Ok(())
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

/// The report's lines: where the page is, the headline and the pixel metrics.
fn report_text(job: &Job, summary: &padim_report::ReportSummary) -> String {
    let verb = done_verb(summary.already_done);
    let mut text = format!("report {verb} -> {}/{}", job.output, padim_store::layout::report::HTML);
    if let Some(h) = summary.headline() {
        text.push_str(&format!(
            "\n{} ({} score, {} threshold {:.4}): calibration AUROC {:.4}; test AUROC {:.4}, accuracy {:.4}, \
             F1 {:.4} (TP {} FP {} TN {} FN {})",
            summary.backbone.as_ref().map_or(h.model.clone(), |b| format!("{b}/{}", h.model)),
            h.score.name(),
            h.threshold_rule.name(),
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
        if let Some(f) = &h.forecast {
            text.push_str(&format!(
                "\nforecast for images to come ({:.0}%, from the calibration split): accuracy {:.4} to {:.4}",
                f.confidence * 100.0,
                f.accuracy.low,
                f.accuracy.high
            ));
        }
    }
    if let Some(p) = &summary.pixel {
        text.push_str(&format!("\npixel AUROC {:.4}, PRO {:.4} ({} images)", p.auroc, p.pro, p.images));
    }
    text
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
