//! The run's layout: every key a stage writes under the run location, how shard and model-part tags
//! are spelled in them, and what the done markers' counts mean. Stages, the report and the tests'
//! expectations of them go through these functions; no other module spells a run key.
//!
//! ```text
//! split/manifest.csv  split/listing.csv  split/done.json
//! extract/{embeddings,images}-TAG.parquet  extract/manifest-TAG.json  extract/claim-TAG.json  extract/done-TAG.json
//! fit/partial-TAG.safetensors  fit/partial-done-TAG.json  fit/model-NAME.safetensors  fit/done.json
//! score/{scores,maps}-TAG[-models-PART].parquet  score/done-TAG[-models-PART].json
//! report/...  report/done.json
//! ```
//!
//! `TAG` is an extract shard's tag (`iiiii-of-nnnnn`, [`Shard::tag`]); `PART` a `--models` part's.

use padim_core::Shard;

/// The names of the done markers' counts ([`crate::DoneMarker::count`]).
pub mod counts {
    /// split: images no split takes (beside one count per `split/label`).
    pub const UNUSED: &str = "unused";
    /// extract: images extracted; report: images of the headline model's rows.
    pub const IMAGES: &str = "images";
    /// extract: images skipped as bad (`skip-bad`).
    pub const SKIPPED: &str = "skipped";
    /// extract, score: rows written.
    pub const ROWS: &str = "rows";
    /// fit (and its partial states): training images accumulated.
    pub const TRAIN_IMAGES: &str = "train-images";
    /// A backbone sweep's report: backbones compared.
    pub const BACKBONES: &str = "backbones";

    /// The split's count of `label` in `split` (`all` without splits).
    pub fn split_label(split: &str, label: &str) -> String {
        format!("{split}/{label}")
    }
}

/// The split stage's keys.
pub mod split {
    /// The image manifest: every image the job works on, numbered.
    pub const MANIFEST: &str = "split/manifest.csv";
    /// Everything the dataset listed when the split was made (relative path, label, SHA-256), so
    /// that a later run can tell added and removed files.
    pub const LISTING: &str = "split/listing.csv";
    /// The done marker; its `digest` is the SHA-256 of the manifest.
    pub const DONE: &str = "split/done.json";
}

/// The extract stage's keys, per extract shard.
pub mod extract {
    use super::Shard;

    /// The folder of the stage's files.
    pub const DIR: &str = "extract";

    /// The embeddings table of `shard`.
    pub fn embeddings(shard: Shard) -> String {
        format!("extract/embeddings-{}.parquet", shard.tag())
    }

    /// The image table of `shard`.
    pub fn images(shard: Shard) -> String {
        format!("extract/images-{}.parquet", shard.tag())
    }

    /// The manifest (resolved job, identity, execution settings) of `shard`.
    pub fn manifest(shard: Shard) -> String {
        format!("extract/manifest-{}.json", shard.tag())
    }

    /// The claim a task holds on `shard` while it writes it.
    pub fn claim(shard: Shard) -> String {
        format!("extract/claim-{}.json", shard.tag())
    }

    /// The done marker of `shard`.
    pub fn done(shard: Shard) -> String {
        format!("extract/done-{}.json", shard.tag())
    }

    /// The shard a done marker's key names, if `key` is one.
    pub fn done_shard(key: &str) -> Option<Shard> {
        let tag = key.strip_prefix("extract/done-")?.strip_suffix(".json")?;
        let (index, count) = tag.split_once("-of-")?;
        Shard::new(index.parse().ok()?, count.parse().ok()?).ok()
    }
}

/// The fit stage's keys.
pub mod fit {
    use super::Shard;

    /// The done marker; its files are the models, in the fit's order.
    pub const DONE: &str = "fit/done.json";

    /// The model of the subset `name`.
    pub fn model(name: &str) -> String {
        format!("fit/model-{name}.safetensors")
    }

    /// The subset name of a model key, if `key` is one.
    pub fn model_name(key: &str) -> Option<&str> {
        key.strip_prefix("fit/model-")?.strip_suffix(".safetensors")
    }

    /// The partial statistics accumulated from the extract shard `shard`.
    pub fn partial(shard: Shard) -> String {
        format!("fit/partial-{}.safetensors", shard.tag())
    }

    /// The nearest-patch bank of the extract shard `shard`'s training images (with nearest-patch
    /// models only), beside [`partial`] and under the same done marker.
    pub fn partial_bank(shard: Shard) -> String {
        format!("fit/partial-bank-{}.safetensors", shard.tag())
    }

    /// The done marker of [`partial`].
    pub fn partial_done(shard: Shard) -> String {
        format!("fit/partial-done-{}.json", shard.tag())
    }
}

/// The score stage's keys, per extract shard and, for a `--models j/m` task, per part.
pub mod score {
    use super::Shard;

    /// The folder of the stage's files.
    pub const DIR: &str = "score";
    /// The start of every scores table's key.
    pub const SCORES_PREFIX: &str = "score/scores-";
    /// The start of every maps table's key.
    pub const MAPS_PREFIX: &str = "score/maps-";
    /// Between an extract shard's tag and a model part's tag.
    const MODELS_INFIX: &str = "-models-";
    /// Done-marker counts with this prefix hold each model's scoring CPU time (distances, resizing
    /// and smoothing, summed over threads) in microseconds; they also say which models a marker's
    /// files hold.
    const MICROS_PREFIX: &str = "micros/";

    /// The tag of the extract shard `shard` with the model part `part` (none: every model).
    fn tag(shard: Shard, part: Option<Shard>) -> String {
        match part {
            Some(part) => format!("{}{MODELS_INFIX}{}", shard.tag(), part.tag()),
            None => shard.tag(),
        }
    }

    /// The scores table of `shard` (and `part`).
    pub fn scores(shard: Shard, part: Option<Shard>) -> String {
        format!("{SCORES_PREFIX}{}.parquet", tag(shard, part))
    }

    /// The maps table of `shard` (and `part`).
    pub fn maps(shard: Shard, part: Option<Shard>) -> String {
        format!("{MAPS_PREFIX}{}.parquet", tag(shard, part))
    }

    /// The done marker of `shard` (and `part`).
    pub fn done(shard: Shard, part: Option<Shard>) -> String {
        format!("score/done-{}.json", tag(shard, part))
    }

    /// The model part of a done marker's key of `shard`, if `key` is the marker of one of its parts.
    pub fn done_part(key: &str, shard: Shard) -> Option<Shard> {
        let rest = key.strip_prefix(&format!("score/done-{}{MODELS_INFIX}", shard.tag()))?;
        let (index, count) = rest.strip_suffix(".json")?.split_once("-of-")?;
        Shard::new(index.parse().ok()?, count.parse().ok()?).ok()
    }

    /// The done-marker count that holds `model`'s scoring CPU time.
    pub fn micros_count(model: &str) -> String {
        format!("{MICROS_PREFIX}{model}")
    }

    /// The model of a done-marker count, if `count` is a scoring time.
    pub fn micros_model(count: &str) -> Option<&str> {
        count.strip_prefix(MICROS_PREFIX)
    }
}

/// The report stage's keys.
pub mod report {
    /// The done marker.
    pub const DONE: &str = "report/done.json";
    /// Every number of the report.
    pub const METRICS: &str = "report/metrics.json";
    /// Resolved config, identities, versions and input checksums.
    pub const RUN_MANIFEST: &str = "report/run-manifest.json";
    /// The deployable bundle of the headline model (`padim predict --model`).
    pub const BUNDLE: &str = "report/bundle.safetensors";
    /// The HTML page.
    pub const HTML: &str = "report/report.html";

    /// A file of the report (a table or a picture) by its file name.
    pub fn file(name: &str) -> String {
        format!("report/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_to_their_shards() {
        let shard = Shard { index: 3, count: 12 };
        let part = Shard { index: 1, count: 2 };
        assert_eq!(extract::done(shard), "extract/done-00003-of-00012.json");
        assert_eq!(extract::done_shard(&extract::done(shard)), Some(shard));
        assert_eq!(extract::done_shard(&extract::images(shard)), None);
        assert_eq!(fit::model_name(&fit::model("all")), Some("all"));
        assert_eq!(score::done(shard, Some(part)), "score/done-00003-of-00012-models-00001-of-00002.json");
        assert_eq!(score::done_part(&score::done(shard, Some(part)), shard), Some(part));
        assert_eq!(score::done_part(&score::done(shard, None), shard), None);
        assert_eq!(score::done_part(&score::done(shard, Some(part)), Shard { index: 4, count: 12 }), None);
        assert!(score::scores(shard, None).starts_with(score::SCORES_PREFIX));
        assert!(score::maps(shard, Some(part)).starts_with(score::MAPS_PREFIX));
        assert_eq!(score::micros_model(&score::micros_count("c050-s1")), Some("c050-s1"));
    }
}
