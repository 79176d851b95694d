//! How embeddings are stored is the job's choice and never changes a result it should not: the
//! lossless choices (encoding, compression, storing only the subsets' channels) give byte-identical
//! models and scores; a later fit that needs a channel that was not stored is refused by name.

use crate::support::{Split, copy_concrete, padim, small_job, stdout};
use padim_store::{EmbeddingReader, Store, ValueType};

const SPLIT: Split = Split { seed: 0, train: 8, calibration: 3 };

#[test]
fn lossless_storage_choices_change_nothing_and_missing_channels_are_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_concrete(dir.path(), 16, 8);
    let fit = "[fit]\nsubsets = [{ name = \"r20\", count = 20, seed = 0 }, { name = \"l1\", layers = [1], count = 6, seed = 3 }]\n";
    let plain =
        format!("[extract]\ndtype = \"f32\"\nencoding = \"plain\"\ncompression = \"none\"\nchannels = \"all\"\n{fit}");
    let compact = format!(
        "[extract]\ndtype = \"f32\"\nencoding = \"byte-stream-split\"\ncompression = \"zstd\"\nchannels = \"subsets\"\n{fit}"
    );
    let a = small_job(dir.path(), "a", "storage", "run-a", SPLIT, &plain);
    let b = small_job(dir.path(), "b", "storage", "run-b", SPLIT, &compact);
    stdout(&padim(&["run", a.to_str().unwrap()]));
    stdout(&padim(&["run", b.to_str().unwrap()]));

    // The compact run stores the union of the two subsets (20 + up to 6 channels of 176), as f32.
    let store = Store::open(&dir.path().join("run-b").display().to_string()).unwrap();
    let key = "extract/embeddings-00000-of-00001.parquet";
    let meta = EmbeddingReader::open(&store, key, Some(&[]), 1).unwrap().meta().clone();
    assert_eq!(meta.value_type, ValueType::F32);
    let stored = meta.stored_channels.clone().unwrap();
    assert!((20..=26).contains(&stored.len()) && stored.iter().all(|&c| c < 176), "{stored:?}");
    assert!(stored.iter().filter(|&&c| c < 24).count() >= 6, "the layer-1 subset's channels: {stored:?}");
    let size = |run: &str| std::fs::metadata(dir.path().join(run).join(key)).unwrap().len();
    assert!(size("run-b") * 5 < size("run-a"), "{} vs {} bytes", size("run-b"), size("run-a"));
    // ...and the same models and scores, byte for byte.
    for file in ["fit/model-r20.safetensors", "fit/model-l1.safetensors", "score/scores-00000-of-00001.parquet"] {
        let read = |run: &str| std::fs::read(dir.path().join(run).join(file)).unwrap();
        assert!(read("run-a") == read("run-b"), "{file} differs");
    }

    // Another seed needs channels the compact run did not store: refused before any work, naming
    // them and what to do; the finished fit stands.
    let other = small_job(dir.path(), "b", "storage", "run-b", SPLIT, &compact.replace("seed = 0", "seed = 1"));
    let models_before = std::fs::read(dir.path().join("run-b/fit/model-r20.safetensors")).unwrap();
    let refused = padim(&["fit", other.to_str().unwrap(), "--force"]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{message}");
    assert!(message.contains("not channel(s)") && message.contains("padim extract JOB --force"), "{message}");
    assert!(message.contains("extract.channels = \"all\""), "{message}");
    assert_eq!(std::fs::read(dir.path().join("run-b/fit/model-r20.safetensors")).unwrap(), models_before);
}
