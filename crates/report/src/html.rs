//! One self-contained HTML page that leads with its answer: the headline model's numbers, what was
//! left out, then the pictures (embedded as base64 PNG data URLs: the page needs no other file), the
//! sweep's table and, collapsed and sortable, every model's metrics.

use crate::summary::{Candidate, ModelMetrics, ReportSummary, SetMetrics};
use base64::Engine;
use padim_core::config::{BEST_MODEL, Job, ScoreKind, ScoreRule, ThresholdRule};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn row(model: &str, score: &str, set: &str, threshold: f64, m: &SetMetrics) -> String {
    let c = &m.confusion;
    format!(
        "<tr><td>{}</td><td>{score}</td><td>{set}</td><td>{}/{}</td><td>{:.4}</td><td>{:.4}</td><td>{threshold:.4}</td>\
         <td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{} / {} / {} / {}</td></tr>",
        escape(model),
        m.normal,
        m.anomalous,
        m.auroc,
        m.aupr,
        m.accuracy,
        m.precision,
        m.recall,
        m.specificity,
        m.f1,
        c.tp,
        c.fp,
        c.tn,
        c.fn_
    )
}

/// How the threshold was chosen, in words.
fn rule_name(rule: ThresholdRule, target_rate: f64) -> String {
    match rule {
        ThresholdRule::Youden => "Youden's J".into(),
        ThresholdRule::YoudenMidpoint => "the middle of the best Youden's J".into(),
        ThresholdRule::Kde => "Youden's J of the smoothed ROC".into(),
        ThresholdRule::Eer => "the equal error rate".into(),
        ThresholdRule::MaxF1 => "maximum F1".into(),
        ThresholdRule::Fpr => format!("false-positive rate at most {target_rate}"),
        ThresholdRule::Fnr => format!("false-negative rate at most {target_rate}"),
    }
}

/// A headline number: `data-model`/`data-score` name its entry of `metrics.json`'s `models` (none:
/// the summary itself), `data-metric` its path there, so that a test can hold the page to the file.
fn number(model: Option<&ModelMetrics>, metric: &str, text: String) -> String {
    let entry = model
        .map(|m| format!(" data-model=\"{}\" data-score=\"{}\"", escape(&m.model), m.score.name()))
        .unwrap_or_default();
    format!("<b{entry} data-metric=\"{metric}\">{text}</b>")
}

/// How the headline model and its image score were chosen, with each score's calibration AUROC and
/// the bootstrap interval of its difference to the mean's.
fn choice_line(job: &Job, summary: &ReportSummary, h: &ModelMetrics) -> String {
    let model = match (job.report.model.as_deref(), &summary.backbone) {
        (Some(name), _) if name != BEST_MODEL => "the job's <code>report.model</code>".to_string(),
        (_, Some(_)) => "the highest calibration AUROC of every backbone's models".to_string(),
        _ => "the highest calibration AUROC of the models".to_string(),
    };
    let Some(choice) = summary.choices.iter().find(|c| c.model == h.model) else {
        return String::new();
    };
    let how = match job.report.score {
        ScoreRule::Auto => "<code>report.score = \"auto\"</code>: the mean unless another score's 95% bootstrap \
                            interval of the calibration AUROC difference lies above zero"
            .to_string(),
        rule => format!("<code>report.score = \"{}\"</code>", rule.name()),
    };
    let r = &choice.resampled;
    format!(
        "<p>Chosen on the calibration split: the model by {model}; the {} score by {how}. Calibration AUROC per \
         score: {}. The bootstrap resampled {} ({} anomalous, {} normal).</p>",
        choice.chosen.name(),
        candidates_text(&choice.candidates),
        escape(&r.unit),
        r.anomalous,
        r.normal
    )
}

/// `mean 0.9964; max 0.9962 (-0.0002, [-0.0031, 0.0025])`.
fn candidates_text(candidates: &[Candidate]) -> String {
    candidates
        .iter()
        .map(|c| {
            if c.score == ScoreKind::Mean {
                format!("{} {:.4}", c.score.name(), c.calibration_auroc)
            } else {
                format!(
                    "{} {:.4} ({:+.4}, [{:+.4}, {:+.4}])",
                    c.score.name(),
                    c.calibration_auroc,
                    c.difference,
                    c.interval[0],
                    c.interval[1]
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The forecast for images to come, and what it rests on.
fn forecast_line(h: &ModelMetrics) -> String {
    let Some(f) = &h.forecast else {
        return String::new();
    };
    let n = |metric: &str, value: f64| number(Some(h), metric, format!("{value:.4}"));
    let (normal, anomalous) = (h.calibration.normal, h.calibration.anomalous);
    format!(
        "<p class=\"headline\">Forecast for images to come, {:.0}% intervals: accuracy {} to {}, false-positive rate \
         {} to {}, false-negative rate {} to {}.</p><p>It rests on the calibration split alone ({normal} normal and \
         {anomalous} anomalous images; a bootstrap of its {}, {} resamples): each class's scores as a smoothed density rate the \
         threshold, and the test split's mix ({} normal, {} anomalous) weighs the two rates. It holds for images like \
         the calibration split's; a new camera, material or defect type is not covered.</p>",
        f.confidence * 100.0,
        n("forecast.accuracy.low", f.accuracy.low),
        n("forecast.accuracy.high", f.accuracy.high),
        n("forecast.fpr.low", f.fpr.low),
        n("forecast.fpr.high", f.fpr.high),
        n("forecast.fnr.low", f.fnr.low),
        n("forecast.fnr.high", f.fnr.high),
        escape(&f.unit),
        f.resamples,
        f.normal,
        f.anomalous,
    )
}

/// The answer first: the headline model's threshold, test AUROC, accuracy and confusion counts, the
/// best model by calibration AUROC when that is another, the pixel metrics, and what was left out.
fn headline(job: &Job, summary: &ReportSummary) -> String {
    let mut html = String::from("<section id=\"headline\">");
    if let Some(h) = summary.headline() {
        let n = |metric: &str, value: f64| number(Some(h), metric, format!("{value:.4}"));
        let count = |metric: &str, value: usize| number(Some(h), metric, value.to_string());
        let c = &h.test.confusion;
        html.push_str(&format!(
            "<p class=\"headline\">Model <b>{}</b>, {} score: test AUROC {}, accuracy {} at threshold {} \
             ({} on the calibration split, calibration AUROC {}).</p>\
             <p>Test images: {} normal, {} anomalous. Flagged: {} true positives, {} false positives; \
             passed: {} true negatives, {} false negatives.</p>",
            escape(&match &summary.backbone {
                Some(backbone) => format!("{backbone}/{}", h.model),
                None => h.model.clone(),
            }),
            h.score.name(),
            n("test.auroc", h.test.auroc),
            n("test.accuracy", h.test.accuracy),
            n("threshold", h.threshold),
            rule_name(h.threshold_rule, job.report.target_rate),
            n("calibration.auroc", h.calibration.auroc),
            count("test.normal", h.test.normal),
            count("test.anomalous", h.test.anomalous),
            count("test.confusion.tp", c.tp),
            count("test.confusion.fp", c.fp),
            count("test.confusion.tn", c.tn),
            count("test.confusion.fn", c.fn_),
        ));
        html.push_str(&forecast_line(h));
        html.push_str(&choice_line(job, summary, h));
        // The best by calibration AUROC (each model with its chosen score), when that is another.
        let best = summary.chosen().fold(None::<&ModelMetrics>, |best, m| match best {
            Some(b) if b.calibration.auroc >= m.calibration.auroc => Some(b),
            _ => Some(m),
        });
        if let Some(best) = best.filter(|b| b.model != h.model && b.calibration.auroc > h.calibration.auroc) {
            let n = |metric: &str, value: f64| number(Some(best), metric, format!("{value:.4}"));
            html.push_str(&format!(
                "<p>Best by calibration AUROC: <b>{}</b>, {} score (calibration AUROC {}; test AUROC {}, accuracy {}); \
                 the headline is the job's <code>report.model</code>.</p>",
                escape(&best.model),
                best.score.name(),
                n("calibration.auroc", best.calibration.auroc),
                n("test.auroc", best.test.auroc),
                n("test.accuracy", best.test.accuracy),
            ));
        }
    }
    if let Some(p) = &summary.pixel {
        html.push_str(&format!(
            "<p class=\"headline\">Pixel level ({} test images, {} defect regions): AUROC {}, PRO (FPR &le; 0.3) {}.</p>",
            number(None, "pixel.images", p.images.to_string()),
            number(None, "pixel.regions", p.regions.to_string()),
            number(None, "pixel.auroc", format!("{:.4}", p.auroc)),
            number(None, "pixel.pro", format!("{:.4}", p.pro)),
        ));
        if let Some(c) = &summary.pixel_calibration {
            html.push_str(&format!(
                "<p>On the calibration split ({} images): pixel AUROC {}, PRO {}.</p>",
                number(None, "pixel-calibration.images", c.images.to_string()),
                number(None, "pixel-calibration.auroc", format!("{:.4}", c.auroc)),
                number(None, "pixel-calibration.pro", format!("{:.4}", c.pro)),
            ));
        }
    }
    let skipped: u64 = summary.left_out.skipped.values().sum();
    let without_mask = summary.pixel.as_ref().map(|p| p.without_mask).unwrap_or(0);
    if skipped > 0 || without_mask > 0 {
        let mut parts = Vec::new();
        if skipped > 0 {
            let per: Vec<String> = summary.left_out.skipped.iter().map(|(k, v)| format!("{} {v}", escape(k))).collect();
            parts.push(format!("<b>{skipped}</b> image(s) skipped as unreadable ({})", per.join(", ")));
        }
        if without_mask > 0 {
            parts.push(format!("<b>{without_mask}</b> anomalous test image(s) without a mask (no pixel metrics)"));
        }
        html.push_str(&format!("<p class=\"left-out\">Left out of the metrics: {}.</p>", parts.join("; ")));
    } else {
        html.push_str("<p class=\"left-out\">Left out of the metrics: nothing.</p>");
    }
    html.push_str("</section>");
    html
}

/// How many experiments the sweep's leaderboard shows.
const LEADERBOARD: usize = 10;

/// The sweep's best experiments by calibration AUROC, with their test outcomes and what sets each
/// apart from the best, right after the headline.
fn leaderboard(sweep: &crate::sweep::SweepSummary) -> String {
    let board = crate::sweep::leaderboard(&sweep.experiments, LEADERBOARD);
    let mut html = format!(
        "<section id=\"leaderboard\"><h2>Leaderboard</h2><p>The best {} of {} experiments by calibration AUROC \
         (ties: fewer channels); the test columns are the outcome, not the choice.</p><div class=\"wide\"><table>\
         <thead><tr><th>rank</th><th>experiment</th><th>score</th><th>calibration AUROC</th><th>test AUROC</th>\
         <th>test accuracy</th><th style=\"text-align:left\">what sets it apart from the best</th></tr></thead><tbody>",
        board.len(),
        sweep.experiments.len()
    );
    for (rank, (e, apart)) in board.iter().enumerate() {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            rank + 1,
            escape(&e.id),
            e.score.map_or("-", ScoreKind::name),
            cell(e.calibration_auroc),
            cell(e.test_auroc),
            cell(e.accuracy),
            escape(apart)
        ));
    }
    html.push_str("</tbody></table></div></section>");
    html
}

/// Sorts a `table.sortable` by the clicked column (numbers as numbers), again to reverse.
const SORT_SCRIPT: &str = "<script>document.querySelectorAll('table.sortable th').forEach((th,i)=>th.addEventListener('click',()=>{\
const body=th.closest('table').tBodies[0];const asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';\
const rows=[...body.rows];rows.sort((a,b)=>{const x=a.cells[i].textContent,y=b.cells[i].textContent;\
const nx=parseFloat(x),ny=parseFloat(y);const c=isNaN(nx)||isNaN(ny)?x.localeCompare(y):nx-ny;return asc?c:-c;});\
rows.forEach(r=>body.appendChild(r));}));</script>";

/// The page; `pictures` are (file name, PNG bytes), shown in order: the headline, a sweep's
/// leaderboard, the pictures, the sweep's tables, then every model's metrics.
pub fn page(job: &Job, summary: &ReportSummary, pictures: &[(String, Vec<u8>)]) -> String {
    let mut html = head(&summary.job);
    html.push_str(&headline(job, summary));
    html.push_str(&format!(
        "<p>Backbone <code>{}</code>; config hash <code>{}</code>. Scores are normalised with the calibration maps' \
         minimum and maximum; heatmaps share one display range, 0 to {:.3} (the {}th percentile of the calibration \
         images' maximum scores).</p>",
        job.backbone.kind.name(),
        summary.config_hash,
        summary.display_range[1],
        job.report.display_percentile
    ));
    if let Some(sweep) = &summary.sweep {
        html.push_str(&leaderboard(sweep));
    }
    html.push_str("<h2>Pictures</h2>");
    let engine = base64::engine::general_purpose::STANDARD;
    for (name, bytes) in pictures {
        html.push_str(&format!(
            "<h3>{}</h3><img alt=\"{0}\" src=\"data:image/png;base64,{}\">",
            escape(name.trim_end_matches(".png")),
            engine.encode(bytes)
        ));
    }
    if let Some(sweep) = &summary.sweep {
        html.push_str(&sweep_tables(job, sweep));
    }
    html.push_str(&models_tables(summary));
    html.push_str(SORT_SCRIPT);
    html.push_str("</body></html>\n");
    html
}

/// The document's head and title.
fn head(job_name: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>padim report: {name}</title><style>\
         body{{font-family:sans-serif;margin:2em auto;padding:0 1em;max-width:1200px;line-height:1.4}}\
         table{{border-collapse:collapse;font-size:13px}} .wide{{overflow-x:auto}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#eee}}\
         table.sortable th{{cursor:pointer}} img{{max-width:100%;margin:6px 0}}\
         #headline{{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:0.2em 1em}}\
         .headline{{font-size:18px}} code{{background:#f4f4f4}} summary{{cursor:pointer;font-weight:bold}}\
         </style></head><body><h1>padim report: {name}</h1>",
        name = escape(job_name)
    )
}

fn cell(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

/// The sweep's groups (mean and standard deviation over seeds) and, collapsed, every experiment.
fn sweep_tables(job: &Job, sweep: &crate::sweep::SweepSummary) -> String {
    let mut html = format!(
        "<h2>Sweep</h2><p>{} experiments from one extraction, fitted together from one accumulation of their \
         channels. Best by calibration AUROC ({} score): \
         <b>{}</b>. Per layer combination, covariance and channel count, mean &plusmn; standard deviation over seeds:</p>\
         <div class=\"wide\"><table class=\"sortable\"><thead><tr><th>backbone</th><th>layers</th><th>covariance</th><th>channels</th><th>experiments</th>\
         <th>calibration AUROC</th><th>test AUROC</th><th>accuracy</th></tr></thead><tbody>",
        sweep.experiments.len(),
        job.report.score.name(),
        escape(sweep.best.as_deref().unwrap_or("none"))
    );
    // A group of one experiment has no standard deviation: its value alone.
    let spread = |mean: Option<f64>, std: Option<f64>| match std {
        Some(_) => format!("{} &plusmn; {}", cell(mean), cell(std)),
        None => cell(mean),
    };
    for g in &sweep.groups {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(if g.backbone.is_empty() { job.backbone.kind.name() } else { &g.backbone }),
            escape(&g.layers),
            g.covariance,
            g.channels,
            g.experiments,
            spread(g.calibration_auroc_mean, g.calibration_auroc_std),
            spread(g.test_auroc_mean, g.test_auroc_std),
            spread(g.accuracy_mean, g.accuracy_std)
        ));
    }
    html.push_str(
        "</tbody></table></div><details><summary>Every experiment</summary><div class=\"wide\">\
         <table class=\"sortable\"><thead><tr><th>experiment</th><th>layers</th><th>channels</th><th>seed</th>\
         <th>score</th><th>calibration AUROC</th><th>test AUROC</th>\
         <th>calibration AUROC mean / max / top</th><th>test AUROC mean / max / top</th>\
         <th>accuracy</th><th>F1</th><th>pixel AUROC (calibration / test)</th><th>model MB</th><th>score CPU s</th></tr></thead><tbody>",
    );
    for e in &sweep.experiments {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td></tr>",
            escape(&e.id),
            escape(&e.layers),
            e.channels,
            e.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            e.score.map_or("-", ScoreKind::name),
            cell(e.calibration_auroc),
            cell(e.test_auroc),
            [e.calibration_auroc_mean_score, e.calibration_auroc_max_score, e.calibration_auroc_top_score]
                .map(cell)
                .join(" / "),
            [e.test_auroc_mean_score, e.test_auroc_max_score, e.test_auroc_top_score].map(cell).join(" / "),
            cell(e.accuracy),
            cell(e.f1),
            match e.calibration_pixel_auroc {
                Some(c) => format!("{} / {}", cell(Some(c)), cell(e.pixel_auroc)),
                None => cell(e.pixel_auroc),
            },
            e.model_bytes as f64 / 1e6,
            e.score_cpu_seconds
        ));
    }
    html.push_str("</tbody></table></div></details>");
    html
}

/// Collapsed: every model's metrics with every image score, each model's score choice, and the
/// combinations that could not be calibrated.
fn models_tables(summary: &ReportSummary) -> String {
    let mut html = format!(
        "<h2>Every model</h2><details><summary>Metrics of {} model(s), every image score, calibration and test \
         (click a column to sort)</summary><div class=\"wide\"><table class=\"sortable\"><thead><tr><th>model</th>\
         <th>score</th><th>set</th><th>normal/anomalous</th><th>AUROC</th><th>AUPR</th><th>threshold</th>\
         <th>accuracy</th><th>precision</th><th>recall</th><th>specificity</th><th>F1</th>\
         <th>TP / FP / TN / FN</th></tr></thead><tbody>",
        summary.models.iter().map(|m| &m.model).collect::<std::collections::BTreeSet<_>>().len()
    );
    for m in &summary.models {
        html.push_str(&row(&m.model, m.score.name(), "calibration", m.threshold, &m.calibration));
        html.push_str(&row(&m.model, m.score.name(), "test", m.threshold, &m.test));
    }
    html.push_str("</tbody></table></div></details>");
    html.push_str(
        "<details><summary>Image score per model (chosen on the calibration split)</summary><div class=\"wide\">\
         <table class=\"sortable\"><thead><tr><th>model</th><th>chosen</th>\
         <th>calibration AUROC (difference to mean, 95% bootstrap interval)</th></tr></thead><tbody>",
    );
    for c in &summary.choices {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            escape(&c.model),
            c.chosen.name(),
            candidates_text(&c.candidates)
        ));
    }
    html.push_str("</tbody></table></div></details>");
    for u in &summary.unusable {
        html.push_str(&format!(
            "<p>Not calibrated: {} ({} score): {}</p>",
            escape(&u.model),
            u.score,
            escape(&u.reason)
        ));
    }
    html
}
