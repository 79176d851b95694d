//! One self-contained HTML page: the headline numbers, every model's metrics, and the pictures
//! embedded as base64 PNG data URLs (the page needs no other file).

use crate::stage::{ReportSummary, SetMetrics};
use base64::Engine;
use padim_core::config::Job;

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

/// The page; `pictures` are (file name, PNG bytes), shown in order.
pub fn page(job: &Job, summary: &ReportSummary, pictures: &[(String, Vec<u8>)]) -> String {
    let mut html = String::new();
    html.push_str(&format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>padim report: {name}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#eee}} img{{max-width:100%;margin:6px 0}}\
         .headline{{font-size:18px}} code{{background:#f4f4f4}}</style></head><body><h1>padim report: {name}</h1>",
        name = escape(&summary.job)
    ));
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
    }
    if let Some(h) = summary.headline() {
        html.push_str(&format!(
            "<p class=\"headline\">Model <b>{}</b>, {} score, threshold by {:?} on the calibration set: \
             calibration AUROC <b>{:.4}</b>; test AUROC <b>{:.4}</b>, accuracy <b>{:.4}</b> \
             ({} normal + {} anomalous test images).</p>",
            escape(&h.model),
            h.score,
            h.threshold_rule,
            h.calibration.auroc,
            h.test.auroc,
            h.test.accuracy,
            h.test.normal,
            h.test.anomalous
        ));
    }
    if let Some(p) = &summary.pixel {
        html.push_str(&format!(
            "<p class=\"headline\">Pixel level ({} test images, {} defect regions): AUROC <b>{:.4}</b>, PRO (FPR &le; 0.3) <b>{:.4}</b>.</p>",
            p.images, p.regions, p.auroc, p.pro
        ));
    }
    html.push_str(&format!(
        "<p>Backbone <code>{}</code>; config hash <code>{}</code>. Scores are normalised with the calibration maps' \
         minimum and maximum; heatmaps share one display range, 0 to {:.3} (the {}th percentile of the calibration \
         images' maximum scores).</p>",
        job.backbone.kind.name(),
        summary.config_hash,
        summary.display_range[1],
        job.report.display_percentile
    ));
    html.push_str(
        "<h2>Metrics</h2><table><tr><th>model</th><th>score</th><th>set</th><th>normal/anomalous</th><th>AUROC</th>\
         <th>AUPR</th><th>threshold</th><th>accuracy</th><th>precision</th><th>recall</th><th>specificity</th><th>F1</th>\
         <th>TP / FP / TN / FN</th></tr>",
    );
    for m in &summary.models {
        html.push_str(&row(&m.model, &m.score, "calibration", m.threshold, &m.calibration));
        html.push_str(&row(&m.model, &m.score, "test", m.threshold, &m.test));
    }
    html.push_str("</table>");
    for u in &summary.unusable {
        html.push_str(&format!(
            "<p>Not calibrated: {} ({} score): {}</p>",
            escape(&u.model),
            u.score,
            escape(&u.reason)
        ));
    }
    if let Some(sweep) = &summary.sweep {
        let cell = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        html.push_str(&format!(
            "<h2>Sweep</h2><p>{} experiments from one extraction, fitted together from one accumulation of their \
             channels. Best by calibration AUROC ({} score): \
             <b>{}</b>. Per layer combination and channel count, mean &plusmn; standard deviation over seeds:</p>\
             <table><tr><th>layers</th><th>channels</th><th>experiments</th><th>calibration AUROC</th><th>test AUROC</th>\
             <th>accuracy</th></tr>",
            sweep.experiments.len(),
            summary.headline_score,
            escape(sweep.best.as_deref().unwrap_or("none"))
        ));
        // A group of one experiment has no standard deviation: its value alone.
        let spread = |mean: Option<f64>, std: Option<f64>| match std {
            Some(_) => format!("{} &plusmn; {}", cell(mean), cell(std)),
            None => cell(mean),
        };
        for g in &sweep.groups {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&g.layers),
                g.channels,
                g.experiments,
                spread(g.calibration_auroc_mean, g.calibration_auroc_std),
                spread(g.test_auroc_mean, g.test_auroc_std),
                spread(g.accuracy_mean, g.accuracy_std)
            ));
        }
        html.push_str(
            "</table><p>Every experiment:</p><table><tr><th>experiment</th><th>layers</th><th>channels</th><th>seed</th>\
             <th>calibration AUROC</th><th>test AUROC</th><th>test AUROC (mean score)</th><th>test AUROC (max score)</th>\
             <th>accuracy</th><th>F1</th><th>pixel AUROC</th><th>model MB</th><th>score CPU s</th></tr>",
        );
        for e in &sweep.experiments {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td></tr>",
                escape(&e.id),
                escape(&e.layers),
                e.channels,
                e.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                cell(e.calibration_auroc),
                cell(e.test_auroc),
                cell(e.test_auroc_mean_score),
                cell(e.test_auroc_max_score),
                cell(e.accuracy),
                cell(e.f1),
                cell(e.pixel_auroc),
                e.model_bytes as f64 / 1e6,
                e.score_cpu_seconds
            ));
        }
        html.push_str("</table>");
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
    html.push_str("</body></html>\n");
    html
}
