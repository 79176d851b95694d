//! The extract stage: a shard of a dataset's images to Parquet embeddings, an image table, a
//! manifest and a done marker, under `<run>/extract/`.

use crate::backbone::{self, Backbone};
use crate::preprocess::{ImageError, Preprocessor};
use crate::weights::{WeightsError, verify_checksum};
use padim_core::channels::ChannelSubset;
use padim_core::config::{Job, StoredChannels, ValueType};
use padim_core::dataset::{DatasetError, ImageRecord};
use padim_core::{Progress, Shard};
use padim_store::layout::{self, counts};
use padim_store::{
    DoneMarker, EmbeddingMeta, EmbeddingValues, EmbeddingWriter, Gate, GateRules, ImageRow, ImageStatus, Inputs,
    LayerInfo, Store, StoreError, WriterSettings, write_image_table,
};
use rayon::prelude::*;
use std::collections::BTreeMap;
use tch::Tensor;

/// A decoded image's width and height, its file's size and the SHA-256 of its bytes, or why it
/// could not be used.
type LoadResult = Result<(u32, u32, u64, String), ImageError>;

/// A decoded batch: its records, what each gave, and the pixels of those that decoded, in order
/// (NCHW f32 of the crop size, in a buffer that goes round between the decoder and the network).
struct DecodedBatch<'a> {
    records: &'a [ImageRecord],
    loaded: Vec<LoadResult>,
    pixels: Vec<f32>,
    seconds: f64,
    /// The first read that failed because the storage did (after its retries): that stops the
    /// stage as a storage failure, never makes a bad image.
    outage: Option<StoreError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Split(#[from] padim_split::SplitStageError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Device(#[from] crate::DeviceError),
    #[error("cannot copy embeddings from libtorch")]
    Copy { source: tch::TchError },
    #[error("a network worker stopped unexpectedly (see the messages above)")]
    NetworkStopped,
    #[error(
        "{count} bad image(s); nothing was published. Fix or remove them, or rerun with --skip-bad to \
         record them as skipped:\n{list}"
    )]
    BadImages { count: usize, list: String, errors: Vec<ImageError> },
    #[error(
        "{url} was made from other inputs or settings (identity {found}, this job's is {expected}): the \
         images' manifest, the weights, the pre-processing or the backbone differ. Use another output \
         location, or --force to redo it"
    )]
    ConfigMismatch { url: String, found: String, expected: String },
    #[error(transparent)]
    Subset(#[from] padim_core::channels::SubsetError),
    #[error(
        "{path} changed after the split (SHA-256 {found}, the manifest records {expected}); rerun \
         `padim split JOB --force`, then this stage"
    )]
    ImageChanged { path: String, expected: String, found: String },
}

impl ExtractError {
    /// Whether a rerun later may succeed (a storage failure), see [`StoreError::is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            ExtractError::Store(e) => e.is_transient(),
            ExtractError::Split(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Choices of one invocation that are not part of the experiment's identity.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// The shard of the dataset's images this task extracts.
    pub shard: Shard,
    /// Redo a shard even if a done marker says it is finished.
    pub force: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { shard: Shard::ALL, force: false }
    }
}

/// What a run of the stage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractSummary {
    pub shard: Shard,
    pub images: usize,
    pub skipped: usize,
    /// True when a matching done marker was found and nothing was recomputed.
    pub already_done: bool,
    pub embeddings_key: String,
    pub images_key: String,
}

/// Runs the extract stage for one shard of the job's dataset. Steps: the split (made if missing),
/// the weights and the identity, the done-marker gate, the claim on the shard, then the work.
pub fn run_extract(
    job: &Job,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<ExtractSummary, ExtractError> {
    let shard = options.shard;
    let span = tracing::info_span!("extract", shard = %shard, job = %job.name);
    let _entered = span.enter();
    let store = Store::open(&job.output)?;
    padim_split::ensure_split(job, &store, progress)?;
    let images_digest = padim_store::identity::split_digest(job, &store)?;
    // Weights named by URL are cached locally by content (libtorch reads files).
    let weights = padim_store::local_copy(&job.backbone.weights, job.backbone.sha256.as_deref())?;
    let weights_sha256 =
        verify_checksum(&weights, job.backbone.sha256.as_deref()).map_err(|e| e.named(&job.backbone.weights))?;
    let inputs = padim_core::config::InputDigests { images: images_digest, weights: weights_sha256.clone() };
    let work = ShardWork {
        shard,
        embeddings_key: layout::extract::embeddings(shard),
        images_key: layout::extract::images(shard),
        manifest_key: layout::extract::manifest(shard),
        done_key: layout::extract::done(shard),
        config_hash: job.extract_hash(&inputs),
        weights,
        weights_sha256,
    };
    let rules = GateRules { force: options.force, inputs: Inputs::Unchecked, refuse_other: true };
    match DoneMarker::gate(&store, &work.done_key, &work.config_hash, rules)? {
        Gate::Current(marker) => {
            tracing::info!(url = %store.url_of(&work.done_key), "shard already done; skipping");
            return Ok(ExtractSummary {
                shard,
                images: marker.count(counts::IMAGES) as usize,
                skipped: marker.count(counts::SKIPPED) as usize,
                already_done: true,
                embeddings_key: work.embeddings_key,
                images_key: work.images_key,
            });
        }
        Gate::Conflict(marker) => {
            return Err(ExtractError::ConfigMismatch {
                url: store.url_of(&work.done_key),
                found: marker.config_hash,
                expected: work.config_hash,
            });
        }
        // Forced: withdraw the marker first so that a crash from here on never leaves a stale one.
        Gate::Redo { marker: Some(_), .. } => store.delete(&work.done_key)?,
        Gate::Redo { marker: None, .. } => {}
    }
    claimed(job, &store, &work, options.force, progress)
}

/// Claims the shard for this identity (one configuration writes its keys at a time), clears what a
/// killed upload left, extracts, and withdraws the claim.
fn claimed(
    job: &Job,
    store: &Store,
    work: &ShardWork,
    force: bool,
    progress: &dyn Progress,
) -> Result<ExtractSummary, ExtractError> {
    let claim_key = layout::extract::claim(work.shard);
    padim_store::claim(store, &claim_key, &work.config_hash, force)?;
    // What a killed upload left is removed, unless a live task of the shard holds the claim's lock
    // (then those files are its uploads in flight). The lock dies with its process, however it dies.
    let lock = store.try_lock(&claim_key)?;
    if let padim_store::Lock::Held(_) = &lock {
        for key in [&work.embeddings_key, &work.images_key] {
            let removed = store.clean_staging(key)?;
            if removed > 0 {
                tracing::info!(key, removed, "removed the staging files of a killed upload");
            }
        }
    }
    let result = extract_claimed(job, store, work, progress);
    // Done or failed, the claim is withdrawn (a killed task's stays, for the next run to take). One
    // that cannot be withdrawn (the storage is down) is harmless: it holds this shard's identity.
    if let Err(error) = store.delete(&claim_key) {
        tracing::warn!(%error, "could not withdraw the claim on the shard");
    }
    drop(lock);
    result
}

/// One claimed shard: its output keys, its identity and the verified weights.
struct ShardWork {
    shard: Shard,
    embeddings_key: String,
    images_key: String,
    manifest_key: String,
    done_key: String,
    config_hash: String,
    /// A local copy of the weights and its SHA-256.
    weights: std::path::PathBuf,
    weights_sha256: String,
}

/// The extract stage's work once the shard is claimed: the network over the shard's images, the
/// outputs and, last, the done marker.
fn extract_claimed(
    job: &Job,
    store: &Store,
    work: &ShardWork,
    progress: &dyn Progress,
) -> Result<ExtractSummary, ExtractError> {
    let all_images = padim_split::job_images(job, store)?;
    let images = &all_images[work.shard.range(all_images.len())];
    tracing::info!(images = images.len(), total = all_images.len(), "listed dataset");
    let device = crate::select_device(job.extract.device)?;
    let (n_workers, worker_threads) = crate::network_workers(device, job.extract.threads);
    // One network per worker (a libtorch module is not shared across threads here).
    let nets = (0..n_workers)
        .map(|_| {
            Backbone::load(job.backbone.kind, &work.weights, job.backbone.tap, device)
                .map_err(|e| e.named(&job.backbone.weights))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mean, std) = nets[0].normalization();
    let preprocessor = Preprocessor::new(job.preprocess.clone(), mean, std);
    let meta = embedding_meta(job, &work.weights_sha256, &work.config_hash, work.shard)?;
    let settings = WriterSettings {
        encoding: job.extract.encoding,
        compression: job.extract.compression,
        row_group_bytes: job.extract.row_group_mib << 20,
    };
    let mut writer = EmbeddingWriter::create(store, &work.embeddings_key, meta.clone(), settings)?;
    progress.start("extract", images.len() as u64);
    let outcome = Pipeline { job, preprocessor: &preprocessor, meta: &meta, worker_threads, progress }.run(
        images,
        nets,
        &mut writer,
    )?;
    progress.finish();
    crate::release_memory();
    if !job.extract.skip_bad && !outcome.bad.is_empty() {
        drop(writer);
        let list = outcome.bad.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n");
        return Err(ExtractError::BadImages { count: outcome.bad.len(), list, errors: outcome.bad });
    }
    let n_rows = writer.finish()?;
    write_image_table(store, &work.images_key, &outcome.rows)?;
    let skipped = outcome.bad.len();
    publish_shard(job, store, work, (&meta, device), (images.len() - skipped, skipped, n_rows))
}

/// What the pipeline gave: every image's row of the image table, and the bad images.
struct PipelineOutcome {
    rows: Vec<ImageRow>,
    bad: Vec<ImageError>,
}

/// The extract pipeline over one shard's images: a thread reads, decodes and hashes the next
/// batch; the network workers each run a batch of their own (in turn, so that batches are written
/// in order); the calling thread hands batches out and gives the embeddings to the writer, whose IO
/// thread encodes and uploads them.
struct Pipeline<'a> {
    job: &'a Job,
    preprocessor: &'a Preprocessor,
    meta: &'a EmbeddingMeta,
    worker_threads: usize,
    progress: &'a dyn Progress,
}

/// A network worker's channels: batches in (pixels, images), embeddings out.
type Worker =
    (std::sync::mpsc::SyncSender<(Vec<f32>, usize)>, std::sync::mpsc::Receiver<Result<EmbeddingValues, ExtractError>>);

impl Pipeline<'_> {
    fn run(
        &self,
        images: &[ImageRecord],
        nets: Vec<Backbone>,
        writer: &mut EmbeddingWriter,
    ) -> Result<PipelineOutcome, ExtractError> {
        let job = self.job;
        let n_workers = nets.len();
        let mut outcome = PipelineOutcome { rows: Vec::with_capacity(images.len()), bad: Vec::new() };
        let (decoded_sender, decoded) = std::sync::mpsc::sync_channel::<DecodedBatch<'_>>(1);
        // Pixel buffers come back from the network workers, so that batches reuse mapped memory.
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<f32>>();
        let (mut decode_time, mut network_wait, mut write_time, mut wait_time) = (0f64, 0f64, 0f64, 0f64);
        std::thread::scope(|scope| -> Result<(), ExtractError> {
            let (batch_size, preprocessor) = (job.extract.batch_size, self.preprocessor);
            scope.spawn(move || {
                for records in images.chunks(batch_size) {
                    let clock = std::time::Instant::now();
                    let pixels = recycled.try_recv().unwrap_or_default();
                    let (loaded, pixels, outage) = decode_batch(preprocessor, records, pixels);
                    let seconds = clock.elapsed().as_secs_f64();
                    let batch = DecodedBatch { records, loaded, pixels, seconds, outage };
                    if decoded_sender.send(batch).is_err() {
                        break; // the network side stopped (an error): nothing more to decode
                    }
                }
            });
            let workers: Vec<Worker> =
                nets.into_iter().map(|net| self.spawn_worker(scope, net, recycle.clone())).collect();
            drop(recycle);
            // Batches handed out and not yet written: (worker, image ids), oldest first.
            let mut in_flight: std::collections::VecDeque<(usize, Vec<u32>)> = std::collections::VecDeque::new();
            let mut next_worker = 0;
            let mut write_oldest = |in_flight: &mut std::collections::VecDeque<(usize, Vec<u32>)>| {
                let Some((worker, ids)) = in_flight.pop_front() else { return Ok(()) };
                let clock = std::time::Instant::now();
                let values = workers[worker].1.recv().map_err(|_| network_stopped())??;
                network_wait += clock.elapsed().as_secs_f64();
                let clock = std::time::Instant::now();
                writer.write(&ids, values)?;
                write_time += clock.elapsed().as_secs_f64();
                Ok::<(), ExtractError>(())
            };
            let mut clock = std::time::Instant::now();
            for DecodedBatch { records, loaded, pixels, seconds, outage } in decoded {
                if let Some(error) = outage {
                    return Err(error.into());
                }
                wait_time += clock.elapsed().as_secs_f64();
                decode_time += seconds;
                let batch_ids = self.record_batch(records, loaded, &mut outcome)?;
                // In the default strict mode the first bad image stops the network; the rest are
                // still checked so that one run reports every bad file.
                let strict_failed = !job.extract.skip_bad && !outcome.bad.is_empty();
                if !strict_failed && !batch_ids.is_empty() {
                    if in_flight.len() == n_workers {
                        write_oldest(&mut in_flight)?;
                    }
                    workers[next_worker].0.send((pixels, batch_ids.len())).map_err(|_| network_stopped())?;
                    in_flight.push_back((next_worker, batch_ids));
                    next_worker = (next_worker + 1) % n_workers;
                }
                self.progress.advance(records.len() as u64);
                clock = std::time::Instant::now();
            }
            while !in_flight.is_empty() {
                write_oldest(&mut in_flight)?;
            }
            Ok(())
        })?;
        tracing::info!(
            decode_s = decode_time,
            network_wait_s = network_wait,
            write_wait_s = write_time,
            decode_wait_s = wait_time,
            "extract loop timings"
        );
        Ok(outcome)
    }

    /// A network worker on its own thread: batches of pixels in, stored embeddings out.
    fn spawn_worker<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        net: Backbone,
        recycle: std::sync::mpsc::Sender<Vec<f32>>,
    ) -> Worker {
        let (batch_sender, batches) = std::sync::mpsc::sync_channel::<(Vec<f32>, usize)>(1);
        let (result_sender, results) = std::sync::mpsc::sync_channel(1);
        let (input_h, input_w) = self.preprocessor.input_size();
        let (stored, value_type, threads) =
            (self.meta.stored_channels.as_deref(), self.meta.value_type, self.worker_threads);
        scope.spawn(move || {
            crate::set_threads(threads);
            for (pixels, n) in batches {
                let input = Tensor::from_slice(&pixels).view([n as i64, 3, input_h as i64, input_w as i64]);
                let _ = recycle.send(pixels);
                if result_sender.send(embed_batch(&net, &input, stored, value_type)).is_err() {
                    break;
                }
            }
        });
        (batch_sender, results)
    }

    /// Records a decoded batch's images in the image table (a bad one with its reason) and returns
    /// the ids of those that go to the network. A file replaced since the split is not this job's
    /// image any more: it stops the stage, whatever skip-bad says.
    fn record_batch(
        &self,
        records: &[ImageRecord],
        loaded: Vec<LoadResult>,
        outcome: &mut PipelineOutcome,
    ) -> Result<Vec<u32>, ExtractError> {
        for (record, result) in records.iter().zip(&loaded) {
            if let (Ok((_, _, _, found)), Some(expected)) = (result, &record.sha256)
                && found != expected
            {
                return Err(ExtractError::ImageChanged {
                    path: record.path.display().to_string(),
                    expected: expected.clone(),
                    found: found.clone(),
                });
            }
        }
        let mut batch_ids = Vec::with_capacity(records.len());
        for (record, result) in records.iter().zip(loaded) {
            match result {
                Ok((width, height, size, sha256)) => {
                    outcome.rows.push(image_row(self.job, record, size, sha256, width, height, None));
                    batch_ids.push(record.id);
                }
                Err(error) => {
                    self.progress.note(&error.to_string());
                    tracing::warn!(%error, "bad image");
                    let bytes = padim_store::read_input(&record.path).unwrap_or_default();
                    let sha256 = if bytes.is_empty() { String::new() } else { padim_core::hash::sha256_hex(&bytes) };
                    outcome.rows.push(image_row(self.job, record, bytes.len() as u64, sha256, 0, 0, Some(&error)));
                    outcome.bad.push(error);
                }
            }
        }
        Ok(batch_ids)
    }
}

/// Writes the shard's manifest (resolved job, identity, execution settings) and, last, its done
/// marker.
fn publish_shard(
    job: &Job,
    store: &Store,
    work: &ShardWork,
    (meta, device): (&EmbeddingMeta, tch::Device),
    (ok, skipped, n_rows): (usize, usize, u64),
) -> Result<ExtractSummary, ExtractError> {
    let manifest = serde_json::json!({
        "stage": "extract",
        "shard": work.shard.to_string(),
        "config-hash": work.config_hash,
        "config": serde_json::from_str::<serde_json::Value>(&job.to_canonical_json()).unwrap_or_default(),
        "padim-version": env!("CARGO_PKG_VERSION"),
        "libtorch-version": "2.13.0",
        "device": format!("{device:?}"),
        // Facts of this run that do not shape the values, so not part of the identity.
        "execution": {
            "threads": job.extract.threads,
            "batch-size": job.extract.batch_size,
            "skip-bad": job.extract.skip_bad,
            "channels": job.extract.channels,
            "encoding": job.extract.encoding,
            "compression": job.extract.compression,
            "row-group-mib": job.extract.row_group_mib,
            "dataset-base": job.dataset.base(),
        },
        "weights-sha256": work.weights_sha256,
        "embeddings": meta,
        "images": ok,
        "skipped": skipped,
        "image-table": work.images_key,
    });
    store.put(&work.manifest_key, serde_json::to_vec_pretty(&manifest).unwrap_or_default())?;
    let counts = BTreeMap::from([
        (counts::IMAGES.to_string(), ok as u64),
        (counts::SKIPPED.to_string(), skipped as u64),
        (counts::ROWS.to_string(), n_rows),
    ]);
    DoneMarker {
        stage: "extract".into(),
        shard: work.shard.to_string(),
        config_hash: work.config_hash.clone(),
        digest: None,
        files: vec![work.embeddings_key.clone(), work.images_key.clone(), work.manifest_key.clone()],
        counts,
        run_id: DoneMarker::new_run_id(),
        // The split's manifest is covered by the identity (its digest).
        made_from: BTreeMap::new(),
    }
    .publish(store, &work.done_key)?;
    tracing::info!(images = ok, skipped, "extract shard done");
    Ok(ExtractSummary {
        shard: work.shard,
        images: ok,
        skipped,
        already_done: false,
        embeddings_key: work.embeddings_key.clone(),
        images_key: work.images_key.clone(),
    })
}

/// The stored channels of a batch's embedding in the stored value type, copied to host memory.
fn embed_batch(
    net: &Backbone,
    input: &Tensor,
    stored: Option<&[usize]>,
    value_type: ValueType,
) -> Result<EmbeddingValues, ExtractError> {
    let copy_error = |source| ExtractError::Copy { source };
    // Selected and cast by libtorch before the copy.
    Ok(match value_type {
        ValueType::F16 => {
            let embedding = net.embed_as(input, stored, tch::Kind::Half);
            EmbeddingValues::F16(Vec::<half::f16>::try_from(embedding.flatten(0, -1)).map_err(copy_error)?)
        }
        ValueType::F32 => {
            let embedding = net.embed_as(input, stored, tch::Kind::Float);
            EmbeddingValues::F32(Vec::<f32>::try_from(embedding.flatten(0, -1)).map_err(copy_error)?)
        }
    })
}

/// A network worker ended without its result (it panicked).
fn network_stopped() -> ExtractError {
    ExtractError::NetworkStopped
}

/// Reads, decodes, pre-processes and hashes a batch of images, in parallel, each into its slot of
/// `pixels` (resized to the batch); the slots of those that decoded are then moved together. A read
/// that failed because the storage did (transient, after its retries) is returned apart: it is no
/// fault of the image.
fn decode_batch(
    preprocessor: &Preprocessor,
    records: &[ImageRecord],
    mut pixels: Vec<f32>,
) -> (Vec<LoadResult>, Vec<f32>, Option<StoreError>) {
    let (height, width) = preprocessor.input_size();
    let slot = 3 * height as usize * width as usize;
    pixels.resize(records.len() * slot, 0.0);
    let paths: Vec<&std::path::Path> = records.iter().map(|r| r.path.as_path()).collect();
    let contents = padim_store::read_inputs(&paths);
    if let Some(index) = contents.iter().position(|c| c.as_ref().is_err_and(StoreError::is_transient)) {
        return (Vec::new(), pixels, contents.into_iter().nth(index).and_then(Result::err));
    }
    let loaded: Vec<LoadResult> = records
        .par_iter()
        .zip(contents)
        .zip(pixels.par_chunks_mut(slot))
        .map(|((record, bytes), out)| match bytes {
            Ok(bytes) => preprocessor
                .prepare_into(&record.path, &bytes, out)
                .map(|(width, height)| (width, height, bytes.len() as u64, padim_core::hash::sha256_hex(&bytes))),
            Err(e) => Err(ImageError::Read { path: record.path.clone(), message: e.to_string() }),
        })
        .collect();
    let mut kept = 0;
    for (index, result) in loaded.iter().enumerate() {
        if result.is_ok() {
            if index != kept {
                pixels.copy_within(index * slot..(index + 1) * slot, kept * slot);
            }
            kept += 1;
        }
    }
    pixels.truncate(kept * slot);
    (loaded, pixels, None)
}

/// The image table's row of `record`; its path is relative to the dataset's base (as in the split
/// manifest), so that later stages find the image wherever the dataset is mounted then.
fn image_row(
    job: &Job,
    record: &ImageRecord,
    size: u64,
    sha256: String,
    width: u32,
    height: u32,
    error: Option<&ImageError>,
) -> ImageRow {
    ImageRow {
        image: record.id,
        path: job.dataset.relative_path(&record.path),
        label: record.label.clone(),
        split: record.split.clone(),
        bytes: size,
        sha256,
        width,
        height,
        status: if error.is_some() { ImageStatus::Skipped } else { ImageStatus::Ok },
        // The row names the file; the message is the reason and what was found, without the path.
        error: error.map(|e| format!("{}: {}", e.reason(), e.detail())),
    }
}

/// The metadata recorded in the embeddings file: what the embedding is, its value type and which
/// channels are stored (`extract.channels = "subsets"`: the union of the job's subsets).
pub fn embedding_meta(
    job: &Job,
    weights_sha256: &str,
    config_hash: &str,
    shard: Shard,
) -> Result<EmbeddingMeta, ExtractError> {
    let channels = backbone::feature_channels(job.backbone.kind);
    let names = backbone::feature_layers(job.backbone.kind, job.backbone.tap);
    let mut first_channel = 0;
    let mut layers = Vec::new();
    for ((name, channels), stride) in names.into_iter().zip(channels).zip([4usize, 8, 16]) {
        layers.push(LayerInfo { name, channels: channels as usize, stride, first_channel });
        first_channel += channels as usize;
    }
    let [input_height, input_width] = job.preprocess.crop.map(|v| v as usize);
    let mut meta = EmbeddingMeta {
        format_version: EmbeddingMeta::FORMAT_VERSION,
        backbone: job.backbone.kind.name().to_string(),
        weights_sha256: weights_sha256.to_string(),
        tap: match job.backbone.tap {
            padim_core::config::Tap::BlockOutput => "block-output".into(),
            padim_core::config::Tap::LastBn => "last-bn".into(),
        },
        layers,
        input_height,
        input_width,
        grid_height: input_height / 4,
        grid_width: input_width / 4,
        n_channels: first_channel,
        config_hash: config_hash.to_string(),
        shard: shard.to_string(),
        value_type: job.extract.dtype,
        stored_channels: None,
    };
    if job.extract.channels == StoredChannels::Subsets {
        let subsets = padim_core::channels::resolve_subsets(&job.fit.subsets, &meta.layer_channels(), meta.n_channels)
            .map_err(ExtractError::Subset)?;
        let union = ChannelSubset::union(subsets.iter().map(|(_, s)| s));
        if union.len() < meta.n_channels {
            meta.stored_channels = Some(union.channels().to_vec());
        }
    }
    Ok(meta)
}
