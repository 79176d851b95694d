//! `padim run`: every stage of a job in order on one machine (split, extract, fit, score, report),
//! each skipping what is done, for the job's run or, with `[sweep] backbones`, for each backbone's
//! run before the report compares them. The binary prints what each stage did as it finishes.

use padim_core::{Job, Progress};
use padim_extract::{ExtractOptions, ExtractSummary};
use padim_fit::{FitOptions, FitSummary};
use padim_report::{ReportOptions, ReportSummary};
use padim_score::{ScoreOptions, ScoreSummary};
use padim_split::{SplitOptions, SplitSummary};

/// A stage of one run that finished (or found its work done).
#[derive(Debug)]
pub enum StageDone {
    Split(SplitSummary),
    Extract(ExtractSummary),
    Fit(FitSummary),
    Score(ScoreSummary),
}

/// The stage that failed, the run it belongs to (its job name) and why: the stage's own error as
/// the source, so that its kind (a storage failure, bad input) reaches the exit code.
#[derive(Debug)]
pub struct RunError {
    pub stage: &'static str,
    pub job: String,
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of job `{}`", self.stage, self.job)
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The error of `stage` of the run `job`.
fn failed<E: std::error::Error + Send + Sync + 'static>(stage: &'static str, job: &Job) -> impl FnOnce(E) -> RunError {
    move |source| RunError { stage, job: job.name.clone(), source: Box::new(source) }
}

/// Runs every stage of `job` on this machine: for each of its runs ([`Job::variants`]) split,
/// extract (one shard: all), fit and score, calling `on_done` with the run and what each stage did;
/// then the job's report. Returns the report's summary.
pub fn run_job(
    job: &Job,
    progress: &dyn Progress,
    on_done: &mut dyn FnMut(&Job, StageDone),
) -> Result<ReportSummary, RunError> {
    for run in job.variants() {
        let split = padim_split::run_split(&run, &SplitOptions::default(), progress).map_err(failed("split", &run))?;
        on_done(&run, StageDone::Split(split));
        let extract =
            padim_extract::run_extract(&run, &ExtractOptions::default(), progress).map_err(failed("extract", &run))?;
        on_done(&run, StageDone::Extract(extract));
        let fit = padim_fit::run_fit(&run, &FitOptions::default(), progress).map_err(failed("fit", &run))?;
        on_done(&run, StageDone::Fit(fit));
        let score = padim_score::run_score(&run, &ScoreOptions::default(), progress).map_err(failed("score", &run))?;
        on_done(&run, StageDone::Score(score));
    }
    padim_report::run_report(job, &ReportOptions::default(), progress).map_err(failed("report", job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_error_stays_in_the_chain_as_itself() {
        let job = padim_core::Job::parse(
            "[run]\nname = \"t\"\noutput = \"out\"\n[dataset]\nroot = [\"/\"]\n[backbone]\nname = \"resnet18\"\nweights = \"w\"\n",
            std::path::Path::new("job.toml"),
        )
        .expect("a job");
        let error = failed("fit", &job)(padim_fit::FitError::ConfigMismatch { url: "u".into() });
        assert_eq!(error.to_string(), "fit of job `t`");
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.downcast_ref::<padim_fit::FitError>().is_some(), "the fit's own error, not a wrapper");
    }
}
