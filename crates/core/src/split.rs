//! Seeded, disjoint train / calibration / test splits per label, that never separate identical files.
//!
//! Files with the same SHA-256 form one group, and so do the files that `split.groups` puts in one
//! group (the views of one part); groups, not files, are assigned, so an exact duplicate or another
//! view of a training part can never be in another split (it would leak training or calibration
//! data into the test).
//! Each label's groups are shuffled with a ChaCha8 stream seeded from the job's seed and the label
//! name (so adding a label does not reshuffle the others), then the splits take groups in the order
//! train, calibration, test until each has exactly its count. The result is sorted by split, label
//! and path: that order numbers the images, so the training images come first in the embeddings.

use crate::config::{SPLITS, SplitAmount, SplitSettings};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A file to assign: its path, label, content hash and, with `split.groups`, its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitInput {
    pub path: PathBuf,
    pub label: String,
    pub sha256: String,
    pub group: Option<String>,
}

/// A file with its split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub path: PathBuf,
    pub label: String,
    pub sha256: String,
    pub split: &'static str,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("the split names label `{label}`, which the dataset does not have (labels: {known})")]
    UnknownLabel { label: String, known: String },
    #[error("label `{label}` has {available} images, but the splits ask for {asked} ({detail}); ask for fewer")]
    TooFew { label: String, available: usize, asked: usize, detail: String },
    #[error("label `{label}`: more than one split takes \"rest\"")]
    TwoRests { label: String },
    #[error(
        "{first} (label {first_label}) and {second} (label {second_label}) are the same file (sha256 {sha256}); \
         an image cannot have two labels: remove one of them"
    )]
    ConflictingDuplicate { first: PathBuf, first_label: String, second: PathBuf, second_label: String, sha256: String },
    #[error(
        "group `{group}` (split.groups) holds {first} (label {first_label}) and {second} (label {second_label}); \
         a group must have one label: give them different groups"
    )]
    GroupSpansLabels { group: String, first: PathBuf, first_label: String, second: PathBuf, second_label: String },
    #[error(
        "label `{label}`: split `{split}` cannot take exactly {count} images without separating a group \
         (identical files, or a group of split.groups; sizes of the groups left: {sizes}); ask for {nearest} instead"
    )]
    Inexact { label: String, split: &'static str, count: usize, sizes: String, nearest: usize },
}

/// Assigns `images` to splits. Images that no split takes are left out. Steps: the sets assigned
/// whole (identical files, named groups) per label, then each label's sets shuffled and dealt.
pub fn assign(images: &[SplitInput], settings: &SplitSettings) -> Result<Vec<Assigned>, SplitError> {
    let groups = whole_sets(images)?;
    for (_, amounts) in settings.parts() {
        if let Some(label) = amounts.keys().find(|l| !groups.contains_key(l.as_str())) {
            let known: Vec<&str> = groups.keys().copied().collect();
            return Err(SplitError::UnknownLabel { label: label.clone(), known: known.join(", ") });
        }
    }
    let mut out = Vec::new();
    for (label, label_groups) in groups {
        out.extend(deal(label, label_groups, settings)?);
    }
    let rank = |split: &str| SPLITS.iter().position(|s| *s == split).unwrap_or(SPLITS.len());
    out.sort_by(|a, b| (rank(a.split), &a.label, &a.path).cmp(&(rank(b.split), &b.label, &b.path)));
    Ok(out)
}

/// Per label, the sets of images that go to one split together: identical files and the files of
/// one named group, joined where they overlap (union-find); each set sorted by path. A set with two
/// labels is an error.
fn whole_sets(images: &[SplitInput]) -> Result<BTreeMap<&str, Vec<Vec<&SplitInput>>>, SplitError> {
    let mut by_hash: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, image) in images.iter().enumerate() {
        by_hash.entry(image.sha256.as_str()).or_default().push(index);
        if let Some(group) = &image.group {
            by_group.entry(group.as_str()).or_default().push(index);
        }
    }
    let first_other_label = |members: &[usize]| {
        let first = members.iter().copied().min_by(|&a, &b| images[a].path.cmp(&images[b].path))?;
        let other = members.iter().copied().find(|&m| images[m].label != images[first].label)?;
        Some((&images[first], &images[other]))
    };
    for (sha256, members) in &by_hash {
        if let Some((first, other)) = first_other_label(members) {
            return Err(SplitError::ConflictingDuplicate {
                first: first.path.clone(),
                first_label: first.label.clone(),
                second: other.path.clone(),
                second_label: other.label.clone(),
                sha256: sha256.to_string(),
            });
        }
    }
    for (group, members) in &by_group {
        if let Some((first, other)) = first_other_label(members) {
            return Err(SplitError::GroupSpansLabels {
                group: group.to_string(),
                first: first.path.clone(),
                first_label: first.label.clone(),
                second: other.path.clone(),
                second_label: other.label.clone(),
            });
        }
    }
    let mut parent: Vec<usize> = (0..images.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for members in by_hash.values().chain(by_group.values()) {
        for &m in &members[1..] {
            let (a, b) = (root(&mut parent, members[0]), root(&mut parent, m));
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut sets: BTreeMap<usize, Vec<&SplitInput>> = BTreeMap::new();
    for (index, image) in images.iter().enumerate() {
        sets.entry(root(&mut parent, index)).or_default().push(image);
    }
    let mut groups: BTreeMap<&str, Vec<Vec<&SplitInput>>> = BTreeMap::new();
    for (_, mut members) in sets {
        members.sort_by(|a, b| a.path.cmp(&b.path));
        groups.entry(members[0].label.as_str()).or_default().push(members);
    }
    Ok(groups)
}

/// One label's sets shuffled (seeded by the split's seed and the label) and dealt to train, then
/// calibration, then test, each taking exactly its count.
fn deal(
    label: &str,
    mut label_groups: Vec<Vec<&SplitInput>>,
    settings: &SplitSettings,
) -> Result<Vec<Assigned>, SplitError> {
    label_groups.sort_by(|a, b| a[0].path.cmp(&b[0].path));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(label_seed(settings.seed, label));
    label_groups.shuffle(&mut rng);
    let available: usize = label_groups.iter().map(Vec::len).sum();
    let counts = counts(label, available, settings)?;
    let mut out = Vec::new();
    let mut queue = label_groups;
    for (split, count) in SPLITS.iter().zip(counts) {
        let mut taken = 0;
        let mut left = Vec::new();
        for group in queue {
            if taken + group.len() <= count {
                taken += group.len();
                out.extend(group.iter().map(|m| Assigned {
                    path: m.path.clone(),
                    label: m.label.clone(),
                    sha256: m.sha256.clone(),
                    split,
                }));
            } else {
                left.push(group);
            }
        }
        if taken < count {
            let sizes: Vec<String> = left.iter().map(|g| g.len().to_string()).collect();
            let nearest = taken + left.iter().map(Vec::len).min().unwrap_or(0);
            return Err(SplitError::Inexact {
                label: label.to_string(),
                split,
                count,
                sizes: sizes.join(", "),
                nearest,
            });
        }
        queue = left;
    }
    Ok(out)
}

/// The number of images each split takes of `label`, in [`SPLITS`] order.
fn counts(label: &str, available: usize, settings: &SplitSettings) -> Result<[usize; 3], SplitError> {
    let mut counts = [0usize; 3];
    let mut rest = None;
    for (index, (_, amounts)) in settings.parts().iter().enumerate() {
        match amounts.get(label) {
            None => {}
            Some(SplitAmount::Count(n)) => counts[index] = *n as usize,
            Some(SplitAmount::Fraction(f)) => counts[index] = (f * available as f64).round() as usize,
            Some(SplitAmount::Rest(_)) if rest.is_some() => {
                return Err(SplitError::TwoRests { label: label.to_string() });
            }
            Some(SplitAmount::Rest(_)) => rest = Some(index),
        }
    }
    let asked: usize = counts.iter().sum();
    let detail = || {
        SPLITS
            .iter()
            .zip(counts)
            .filter(|(_, c)| *c > 0)
            .map(|(s, c)| format!("{s} {c}"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    if asked > available {
        return Err(SplitError::TooFew { label: label.to_string(), available, asked, detail: detail() });
    }
    if let Some(index) = rest {
        counts[index] = available - asked;
    }
    Ok(counts)
}

/// The shuffle seed of one label: the job's seed and the label's name, hashed.
fn label_seed(seed: u64, label: &str) -> u64 {
    let digest = crate::hash::sha256_hex(format!("{seed}/{label}").as_bytes());
    u64::from_str_radix(&digest[..16], 16).unwrap_or(seed)
}

/// One image of the split stage's manifest: its path relative to the dataset's base (see
/// [`crate::config::Dataset`]'s `relative_path`), label, split (none for a job without `[split]`,
/// unless its own manifest names one) and the SHA-256 of its content. Position = image id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub path: String,
    pub label: String,
    pub split: Option<String>,
    pub sha256: String,
}

/// The split manifest as CSV (`image,path,label,split,sha256`), images numbered in order.
pub fn manifest_csv(rows: &[ManifestRow]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(["image", "path", "label", "split", "sha256"]);
    for (id, row) in rows.iter().enumerate() {
        let _ = writer.write_record([
            id.to_string().as_str(),
            &row.path,
            &row.label,
            row.split.as_deref().unwrap_or(""),
            &row.sha256,
        ]);
    }
    writer.into_inner().unwrap_or_default()
}

/// A split manifest that does not read: its name, the line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}, line {line}: {problem}")]
pub struct ManifestError {
    pub name: String,
    pub line: usize,
    pub problem: String,
}

/// Reads a split manifest written by [`manifest_csv`]; `name` names it in errors.
pub fn read_manifest_csv(bytes: &[u8], name: &str) -> Result<Vec<ManifestRow>, ManifestError> {
    let mut reader = csv::Reader::from_reader(bytes);
    let mut out = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let error = |problem: String| ManifestError { name: name.to_string(), line, problem };
        let record = record.map_err(|e| error(e.to_string()))?;
        let field = |i: usize| record.get(i).ok_or_else(|| error("too few columns".into()));
        let id: u32 = field(0)?.parse().map_err(|_| error("bad image id".into()))?;
        if id as usize != out.len() {
            return Err(error("image ids must count up from 0".into()));
        }
        let sha256 = field(4)?;
        if sha256.len() != 64 {
            return Err(error("the sha256 column must hold 64 hexadecimal digits".into()));
        }
        out.push(ManifestRow {
            path: field(1)?.to_string(),
            label: field(2)?.to_string(),
            split: Some(field(3)?).filter(|s| !s.is_empty()).map(str::to_string),
            sha256: sha256.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(spec: &[(&str, usize)]) -> Vec<SplitInput> {
        let mut out = Vec::new();
        for (label, n) in spec {
            for i in 0..*n {
                out.push(SplitInput {
                    path: PathBuf::from(format!("{label}/{i:04}.jpg")),
                    label: label.to_string(),
                    sha256: format!("{label}-{i}"),
                    group: None,
                });
            }
        }
        out
    }

    fn settings(text: &str) -> SplitSettings {
        toml::from_str(text).unwrap()
    }

    fn recipe() -> SplitSettings {
        settings(
            "seed = 0\ntrain = { Negative = 250 }\ncalibration = { Negative = 100, Positive = 100 }\n\
             test = { Negative = 1000, Positive = 1000 }\n",
        )
    }

    #[test]
    fn recipe_counts_disjoint_and_ordered() {
        let images = inputs(&[("Negative", 1500), ("Positive", 1500)]);
        let out = assign(&images, &recipe()).unwrap();
        let count = |split: &str, label: &str| out.iter().filter(|a| a.split == split && a.label == label).count();
        assert_eq!(
            (count("train", "Negative"), count("train", "Positive"), count("calibration", "Negative")),
            (250, 0, 100)
        );
        assert_eq!(
            (count("calibration", "Positive"), count("test", "Negative"), count("test", "Positive")),
            (100, 1000, 1000)
        );
        let mut paths: Vec<&PathBuf> = out.iter().map(|a| &a.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), out.len(), "an image is in two splits");
        assert!(out[..250].iter().all(|a| a.split == "train"), "training images come first");
        // Same seed, same assignment; another seed, another one.
        assert_eq!(assign(&images, &recipe()).unwrap(), out);
        let mut other = recipe();
        other.seed = 1;
        assert_ne!(assign(&images, &other).unwrap(), out);
    }

    #[test]
    fn manifest_round_trips() {
        let out = assign(&inputs(&[("a", 3), ("b", 2)]), &settings("train = { a = 2 }\ntest = { b = 2 }\n")).unwrap();
        let rows: Vec<ManifestRow> = out
            .iter()
            .map(|a| ManifestRow {
                path: a.path.display().to_string(),
                label: a.label.clone(),
                split: Some(a.split.to_string()),
                sha256: format!("{:0>64}", a.sha256),
            })
            .collect();
        let records = read_manifest_csv(&manifest_csv(&rows), "m.csv").unwrap();
        assert_eq!(records, rows);
        let sha = "0".repeat(64);
        let unsplit = format!("image,path,label,split,sha256\n0,x,a,,{sha}\n");
        assert_eq!(read_manifest_csv(unsplit.as_bytes(), "m.csv").unwrap()[0].split, None);
        let bad_id = format!("image,path,label,split,sha256\n1,x,a,train,{sha}\n");
        assert!(read_manifest_csv(bad_id.as_bytes(), "m.csv").unwrap_err().to_string().contains("line 2"));
    }

    #[test]
    fn duplicates_never_straddle_splits() {
        let mut images = inputs(&[("good", 40), ("bad", 10)]);
        // Ten pairs and one triple of identical files among the good ones.
        for i in 0..10 {
            images[2 * i + 1].sha256 = images[2 * i].sha256.clone();
        }
        images[22].sha256 = images[20].sha256.clone();
        images[21].sha256 = images[20].sha256.clone();
        let config = settings(
            "seed = 3\ntrain = { good = 15 }\ncalibration = { good = 5, bad = 5 }\ntest = { good = \"rest\", bad = \"rest\" }\n",
        );
        let out = assign(&images, &config).unwrap();
        assert_eq!(out.len(), 50);
        let mut split_of: BTreeMap<&str, &str> = BTreeMap::new();
        for a in &out {
            let previous = split_of.insert(&a.sha256, a.split);
            assert!(previous.is_none_or(|p| p == a.split), "{} is in two splits", a.sha256);
        }
        assert_eq!(out.iter().filter(|a| a.split == "train").count(), 15);
    }

    #[test]
    fn groups_never_straddle_splits() {
        // 60 views of 10 parts (6 each) and 12 views of 3 defective parts; two views of different
        // parts are also identical files, which joins their parts.
        let mut images = inputs(&[("good", 60), ("bad", 12)]);
        for (i, image) in images.iter_mut().enumerate() {
            let part = if i < 60 { i / 6 } else { 100 + (i - 60) / 4 };
            image.group = Some(format!("part-{part}"));
        }
        images[5].sha256 = images[6].sha256.clone();
        let config = settings(
            "seed = 7\ntrain = { good = 30 }\ncalibration = { good = 12, bad = 4 }\ntest = { good = \"rest\", bad = \"rest\" }\n",
        );
        let out = assign(&images, &config).unwrap();
        assert_eq!(out.len(), 72);
        let group_of: BTreeMap<&PathBuf, &str> =
            images.iter().map(|i| (&i.path, i.group.as_deref().unwrap_or(""))).collect();
        let mut split_of: BTreeMap<&str, &str> = BTreeMap::new();
        for a in &out {
            let group = if ["part-0", "part-1"].contains(&group_of[&a.path]) { "part-0+1" } else { group_of[&a.path] };
            let previous = split_of.insert(group, a.split);
            assert!(previous.is_none_or(|p| p == a.split), "{group} is in two splits");
        }
        let count = |split: &str| out.iter().filter(|a| a.split == split).count();
        assert_eq!((count("train"), count("calibration"), count("test")), (30, 16, 26));
        // Without groups the same counts divide parts (the check above would fail).
        let ungrouped: Vec<SplitInput> = images.iter().map(|i| SplitInput { group: None, ..i.clone() }).collect();
        let out = assign(&ungrouped, &config).unwrap();
        let divided = (0..10).any(|part| {
            let splits: Vec<&str> =
                out.iter().filter(|a| group_of[&a.path] == format!("part-{part}")).map(|a| a.split).collect();
            splits.iter().any(|s| *s != splits[0])
        });
        assert!(divided, "this seed's ungrouped split happens to keep every part together");
        // A count that only divides a group is refused with the nearest that does not.
        let odd = settings("train = { good = 31 }\ntest = { good = \"rest\" }\n");
        let message = assign(&images, &odd).unwrap_err().to_string();
        assert!(message.contains("cannot take exactly 31") && message.contains("ask for"), "{message}");
        // A group has one label.
        let mut mixed = images.clone();
        mixed[60].group = Some("part-3".into());
        let message = assign(&mixed, &config).unwrap_err().to_string();
        assert!(message.contains("group `part-3`") && message.contains("bad/0000.jpg"), "{message}");
    }

    #[test]
    fn fractions_rest_and_errors() {
        let images = inputs(&[("a", 10), ("b", 4)]);
        let out = assign(&images, &settings("train = { a = 0.5 }\ntest = { a = \"rest\", b = 1.0 }\n")).unwrap();
        assert_eq!(out.iter().filter(|x| x.split == "train").count(), 5);
        assert_eq!(out.iter().filter(|x| x.split == "test").count(), 9);

        let too_many = assign(&images, &settings("train = { a = 8 }\ntest = { a = 3 }\n")).unwrap_err();
        assert!(too_many.to_string().contains("label `a` has 10 images, but the splits ask for 11 (train 8 + test 3)"));
        let unknown = assign(&images, &settings("train = { c = 1 }\n")).unwrap_err();
        assert!(unknown.to_string().contains("label `c`") && unknown.to_string().contains("a, b"), "{unknown}");
        let mut conflicting = images.clone();
        conflicting[12].sha256 = conflicting[0].sha256.clone();
        let message = assign(&conflicting, &settings("train = { a = 1 }\n")).unwrap_err().to_string();
        assert!(message.contains("a/0000.jpg") && message.contains("b/0002.jpg"), "{message}");
    }
}
