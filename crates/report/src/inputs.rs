//! What the report reads: the score outputs of every extract shard (through their done markers:
//! whole-model markers, or `--models` parts that cover every model once), the score tables joined
//! with the image tables (polars), the grid maps, what extract skipped, and model sizes.

use crate::error::{ReportError, table_error};
use crate::summary::{LeftOut, SkippedFile};
use padim_core::Shard;
use padim_core::config::{ScoreKind, SplitName};
use padim_store::{DoneMarker, Store, layout, read_maps};
use polars::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;

/// The score of one image under one model, with where the image is.
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    pub(crate) image: u32,
    pub(crate) path: String,
    pub(crate) label: String,
    /// The image's split (`None`: a split of no meaning to the report, or none).
    pub(crate) split: Option<SplitName>,
    /// The split as the manifest names it (empty without one), for the tables.
    pub(crate) split_text: String,
    pub(crate) mean: f64,
    pub(crate) max: f64,
    pub(crate) min: f64,
    pub(crate) top: f64,
}

impl Scored {
    pub(crate) fn score(&self, kind: ScoreKind) -> f64 {
        match kind {
            ScoreKind::Mean => self.mean,
            ScoreKind::Max => self.max,
            ScoreKind::Top => self.top,
        }
    }
}

/// One extract shard's score outputs: its whole-model done marker, or the markers of `--models`
/// parts that together cover every model once.
pub(crate) struct ScoreShard {
    pub(crate) shard: Shard,
    pub(crate) markers: Vec<DoneMarker>,
    /// The keys of `markers`.
    pub(crate) keys: Vec<String>,
}

impl ScoreShard {
    /// The files of its markers whose keys start with `prefix` (`score/scores-`, `score/maps-`).
    fn files<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.markers.iter().flat_map(|m| m.files.iter()).filter(move |f| f.starts_with(prefix))
    }

    /// Whether its outputs hold `model` (its markers count each model's time).
    fn marker_has(marker: &DoneMarker, model: &str) -> bool {
        marker.counts.contains_key(&layout::score::micros_count(model))
    }
}

/// The extract shards' score outputs; every shard must be scored with every model of this
/// configuration.
pub(crate) fn score_shards(
    store: &Store,
    extract_hash: &str,
    score_hash: &str,
) -> Result<Vec<ScoreShard>, ReportError> {
    let shards = padim_store::extract_shards(store, extract_hash)?;
    let count = shards.first().map_or(0, |s| s.count);
    let models: Vec<String> = DoneMarker::read(store, layout::fit::DONE)?
        .map(|m| m.files)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| layout::fit::model_name(f).map(String::from))
        .collect();
    let keys: Vec<String> = store.list(layout::score::DIR)?;
    let (mut out, mut missing) = (Vec::new(), Vec::new());
    for index in 0..count {
        let shard = Shard { index, count };
        let whole_key = layout::score::done(shard, None);
        let whole = DoneMarker::read(store, &whole_key)?.filter(|m| m.config_hash == score_hash);
        let markers = match whole {
            Some(marker) => Some(vec![(whole_key, marker)]),
            None => model_parts(store, shard, score_hash, &models, &keys)?,
        };
        match markers {
            Some(markers) => {
                for (key, marker) in &markers {
                    if let Some(input) = marker.stale_input(store)? {
                        return Err(ReportError::Stale { url: store.url_of(key), input: store.url_of(&input) });
                    }
                }
                let (keys, markers) = markers.into_iter().unzip();
                out.push(ScoreShard { shard, markers, keys })
            }
            None => missing.push(index.to_string()),
        }
    }
    if count == 0 || !missing.is_empty() {
        return Err(ReportError::MissingScores {
            url: store.url_of(layout::score::DIR),
            missing: if count == 0 { "all".into() } else { missing.join(", ") },
            count,
        });
    }
    Ok(out)
}

/// The `--models` part markers of the extract shard `shard` among `keys` (of this configuration,
/// from one split J/M) that cover `models` exactly once, if there are such.
pub(crate) fn model_parts(
    store: &Store,
    shard: Shard,
    score_hash: &str,
    models: &[String],
    keys: &[String],
) -> Result<Option<Vec<(String, DoneMarker)>>, ReportError> {
    // Per split (the parts' count M): its markers.
    let mut splits: BTreeMap<u32, Vec<(String, DoneMarker)>> = BTreeMap::new();
    for key in keys {
        let Some(part) = layout::score::done_part(key, shard) else { continue };
        let Some(marker) = DoneMarker::read(store, key)?.filter(|m| m.config_hash == score_hash) else { continue };
        splits.entry(part.count).or_default().push((key.clone(), marker));
    }
    for markers in splits.into_values() {
        let covered: Vec<&String> = models
            .iter()
            .filter(|m| markers.iter().filter(|(_, k)| ScoreShard::marker_has(k, m)).count() == 1)
            .collect();
        let scored: usize = markers
            .iter()
            .map(|(_, k)| k.counts.keys().filter(|c| layout::score::micros_model(c).is_some()).count())
            .sum();
        if !models.is_empty() && covered.len() == models.len() && scored == models.len() {
            return Ok(Some(markers));
        }
    }
    Ok(None)
}

pub(crate) fn read_parquet(store: &Store, key: &str) -> Result<DataFrame, ReportError> {
    let bytes =
        store.get(key)?.ok_or_else(|| ReportError::Table { what: store.url_of(key), message: "missing".into() })?;
    ParquetReader::new(Cursor::new(bytes.to_vec())).finish().map_err(table_error(&store.url_of(key)))
}

/// The scores of every shard joined with the image table's paths (polars).
pub(crate) fn load_scores(store: &Store, shards: &[ScoreShard]) -> Result<DataFrame, ReportError> {
    let mut scores: Option<DataFrame> = None;
    let mut images: Option<DataFrame> = None;
    for shard in shards {
        for key in shard.files(layout::score::SCORES_PREFIX) {
            let s = read_parquet(store, key)?;
            scores = Some(match scores {
                None => s,
                Some(all) => all.vstack(&s).map_err(table_error("scores"))?,
            });
        }
        let i = read_parquet(store, &layout::extract::images(shard.shard))?
            .select(["image", "path"])
            .map_err(table_error("image table"))?;
        images = Some(match images {
            None => i,
            Some(all) => all.vstack(&i).map_err(table_error("image table"))?,
        });
    }
    let (Some(scores), Some(images)) = (scores, images) else {
        return Err(ReportError::Table { what: "scores".into(), message: "no shards".into() });
    };
    scores
        .join(&images, ["image"], ["image"], JoinArgs::new(JoinType::Left), None)
        .and_then(|joined| joined.sort(["model", "image"], SortMultipleOptions::default()))
        .map_err(table_error("scores joined with images"))
}

pub(crate) fn group_by_model(df: &DataFrame) -> Result<BTreeMap<String, Vec<Scored>>, ReportError> {
    let e = table_error("scores");
    let image = df.column("image").map_err(&e)?.u32().map_err(&e)?.clone();
    let strings = |name: &str| -> Result<Vec<String>, ReportError> {
        Ok(df.column(name).map_err(&e)?.str().map_err(&e)?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    // `mean` and `top` are Float64, `max` and `min` Float32 in the score tables.
    let floats = |name: &str| -> Result<Vec<f64>, ReportError> {
        let column = df.column(name).map_err(&e)?.cast(&DataType::Float64).map_err(&e)?;
        Ok(column.f64().map_err(&e)?.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    };
    let (path, label, split, model) = (strings("path")?, strings("label")?, strings("split")?, strings("model")?);
    let (mean, max, min, top) = (floats("mean")?, floats("max")?, floats("min")?, floats("top")?);
    let mut out: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    for (i, id) in image.iter().enumerate() {
        out.entry(model[i].clone()).or_default().push(Scored {
            image: id.unwrap_or_default(),
            path: path[i].clone(),
            label: label[i].clone(),
            split: SplitName::from_name(&split[i]),
            split_text: split[i].clone(),
            mean: mean[i],
            max: max[i],
            min: min[i],
            top: top[i],
        });
    }
    Ok(out)
}

/// The image tables of the extract shards, in shard order: read once for what the report left out
/// and for the run manifest.
pub(crate) fn image_rows(store: &Store, shards: &[ScoreShard]) -> Result<Vec<padim_store::ImageRow>, ReportError> {
    let mut rows = Vec::new();
    for shard in shards {
        rows.extend(padim_store::read_image_table(store, &layout::extract::images(shard.shard))?);
    }
    Ok(rows)
}

/// The images the extract shards skipped.
pub(crate) fn left_out(image_rows: &[padim_store::ImageRow]) -> LeftOut {
    let mut out = LeftOut::default();
    for row in image_rows.iter().filter(|row| row.status == padim_store::ImageStatus::Skipped) {
        let split = row.split.clone().unwrap_or_else(|| "all".into());
        *out.skipped.entry(format!("{split}/{}", row.label)).or_default() += 1;
        out.skipped_files.push(SkippedFile {
            path: row.path.clone(),
            split,
            label: row.label.clone(),
            reason: row.error.clone().unwrap_or_default(),
        });
    }
    out
}

/// The raw grid maps of each of `models` for the images in `wanted`, from every shard, reading each
/// maps file once for all of them.
pub(crate) fn load_maps(
    store: &Store,
    shards: &[ScoreShard],
    models: &[&str],
    wanted: &BTreeSet<u32>,
) -> Result<HashMap<String, HashMap<u32, Vec<f32>>>, ReportError> {
    let mut out: HashMap<String, HashMap<u32, Vec<f32>>> = HashMap::new();
    for shard in shards {
        for marker in shard.markers.iter().filter(|m| models.iter().any(|model| ScoreShard::marker_has(m, model))) {
            for key in marker.files.iter().filter(|f| f.starts_with(layout::score::MAPS_PREFIX)) {
                for row in read_maps(store, key)? {
                    if models.contains(&row.model.as_str()) && wanted.contains(&row.image) {
                        out.entry(row.model).or_default().insert(row.image, row.map);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The channel count (from the safetensors header) and size of a stored model.
pub(crate) fn stored_model_channels(store: &Store, key: &str) -> Result<(usize, u64), ReportError> {
    let error = |message: String| ReportError::Table { what: store.url_of(key), message };
    let size = store.size(key)?.ok_or_else(|| error("missing".into()))?;
    let length: [u8; 8] =
        store.get_range(key, 0..8.min(size))?.as_ref().try_into().map_err(|_| error("not a model file".into()))?;
    let end = 8u64.saturating_add(u64::from_le_bytes(length));
    if end > size {
        return Err(error("not a model file (header longer than the file)".into()));
    }
    let header = store.get_range(key, 8..end)?;
    let channels = padim_fit::model::channels_in_header(&header).map_err(|e| error(e.to_string()))?;
    Ok((channels, size))
}
