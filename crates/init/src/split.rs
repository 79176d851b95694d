//! The split sizes `init` writes: the reference recipe's, scaled to the folder's counts.
//!
//! The recipe takes 250 normal images to train, 100 normal and 100 anomalous to calibrate and 1,000
//! of each to test (1,350 normal and 1,100 anomalous in all). A folder with at least that many keeps
//! those counts (the rest is left unused, as the main job leaves it); a smaller one gets the same
//! proportions, with floors (20 to train, 10 of each class to calibrate and to test) so that every
//! split means something; below the floors it is refused.

use crate::InitError;
use std::collections::BTreeMap;

const NORMAL_TRAIN: usize = 250;
const NORMAL_CALIBRATION: usize = 100;
const NORMAL_TEST: usize = 1000;
const ANOMALOUS_CALIBRATION: usize = 100;
const ANOMALOUS_TEST: usize = 1000;
const MIN_TRAIN: usize = 20;
const MIN_CALIBRATION: usize = 10;
const MIN_TEST: usize = 10;

/// A split of the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Calibration,
    Test,
}

/// How many images of one label a split takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(usize),
    /// What the other splits leave.
    Rest,
}

/// The split sizes per label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    pub train: BTreeMap<String, Amount>,
    pub calibration: BTreeMap<String, Amount>,
    pub test: BTreeMap<String, Amount>,
    /// Whether the recipe's counts were scaled down (the folder holds fewer images).
    pub scaled: bool,
    /// The images of each class no split takes.
    pub unused: usize,
    /// Per class, the totals of each split: (normal, anomalous) x (train, calibration, test).
    totals: [[usize; 3]; 2],
}

/// The split for these label counts (normal and anomalous labels apart).
pub fn plan_split(
    normal: &BTreeMap<String, usize>,
    anomalous: &BTreeMap<String, usize>,
) -> Result<SplitPlan, InitError> {
    let n: usize = normal.values().sum();
    let a: usize = anomalous.values().sum();
    let too_few = |what: &str, count: usize, needed: String| InitError::TooFew { what: what.into(), count, needed };
    // Normal images: train, calibration, test.
    let (normal_full, [train, cal_n, test_n]) = if n >= NORMAL_TRAIN + NORMAL_CALIBRATION + NORMAL_TEST {
        (true, [NORMAL_TRAIN, NORMAL_CALIBRATION, NORMAL_TEST])
    } else {
        let total = (NORMAL_TRAIN + NORMAL_CALIBRATION + NORMAL_TEST) as f64;
        let train = ((n * NORMAL_TRAIN) as f64 / total).round() as usize;
        let cal = ((n * NORMAL_CALIBRATION) as f64 / total).round() as usize;
        let (train, cal) = (train.max(MIN_TRAIN), cal.max(MIN_CALIBRATION));
        if n < train + cal + MIN_TEST {
            return Err(too_few(
                "normal images",
                n,
                format!(
                    "padim needs at least {} ({MIN_TRAIN} to train, {MIN_CALIBRATION} to calibrate, {MIN_TEST} to test)",
                    MIN_TRAIN + MIN_CALIBRATION + MIN_TEST
                ),
            ));
        }
        (false, [train, cal, n - train - cal])
    };
    let (anomalous_full, [cal_a, test_a]) = if a >= ANOMALOUS_CALIBRATION + ANOMALOUS_TEST {
        (true, [ANOMALOUS_CALIBRATION, ANOMALOUS_TEST])
    } else {
        let cal = (((a * ANOMALOUS_CALIBRATION) as f64 / (ANOMALOUS_CALIBRATION + ANOMALOUS_TEST) as f64).round()
            as usize)
            .max(MIN_CALIBRATION);
        if a < cal + MIN_TEST {
            return Err(too_few(
                "anomalous images",
                a,
                format!(
                    "padim needs at least {} ({MIN_CALIBRATION} to calibrate, {MIN_TEST} to test)",
                    MIN_CALIBRATION + MIN_TEST
                ),
            ));
        }
        (false, [cal, a - cal])
    };
    let mut plan = SplitPlan {
        train: BTreeMap::new(),
        calibration: BTreeMap::new(),
        test: BTreeMap::new(),
        scaled: !(normal_full && anomalous_full),
        unused: (n - train - cal_n - test_n) + (a - cal_a - test_a),
        totals: [[train, cal_n, test_n], [0, cal_a, test_a]],
    };
    fill(&mut plan, normal, &[train, cal_n], (!normal_full).then_some(()), test_n);
    fill(&mut plan, anomalous, &[0, cal_a], (!anomalous_full).then_some(()), test_a);
    Ok(plan)
}

/// Deals each split's total over the labels in proportion to their counts (largest remainder);
/// the test split takes the rest of each label when `rest` is set, else `test` dealt likewise.
fn fill(plan: &mut SplitPlan, labels: &BTreeMap<String, usize>, totals: &[usize; 2], rest: Option<()>, test: usize) {
    let mut left: BTreeMap<String, usize> = labels.clone();
    for (part, total) in [(Part::Train, totals[0]), (Part::Calibration, totals[1])] {
        for (label, count) in deal(&left, total) {
            if count > 0 {
                plan.part_mut(part).insert(label.clone(), Amount::Count(count));
                *left.entry(label).or_default() -= count;
            }
        }
    }
    if rest.is_some() {
        for (label, count) in &left {
            if *count > 0 {
                plan.test.insert(label.clone(), Amount::Rest);
            }
        }
    } else {
        for (label, count) in deal(&left, test) {
            if count > 0 {
                plan.test.insert(label, Amount::Count(count));
            }
        }
    }
}

/// `total` dealt over `counts` in proportion (largest remainder), never more than a label has.
fn deal(counts: &BTreeMap<String, usize>, total: usize) -> Vec<(String, usize)> {
    let sum: usize = counts.values().sum();
    if sum == 0 || total == 0 {
        return counts.keys().map(|l| (l.clone(), 0)).collect();
    }
    let total = total.min(sum);
    let mut shares: Vec<(String, usize, f64)> = counts
        .iter()
        .map(|(l, &c)| {
            let exact = total as f64 * c as f64 / sum as f64;
            (l.clone(), exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut missing = total - shares.iter().map(|s| s.1).sum::<usize>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&i, &j| shares[j].2.total_cmp(&shares[i].2).then(i.cmp(&j)));
    for i in order {
        if missing == 0 {
            break;
        }
        if shares[i].1 < counts[&shares[i].0] {
            shares[i].1 += 1;
            missing -= 1;
        }
    }
    shares.into_iter().map(|(l, n, _)| (l, n)).collect()
}

/// A TOML key: bare when it can be, else quoted.
fn key(label: &str) -> String {
    if !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        label.to_string()
    } else {
        format!("\"{}\"", label.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

impl SplitPlan {
    fn part_mut(&mut self, part: Part) -> &mut BTreeMap<String, Amount> {
        match part {
            Part::Train => &mut self.train,
            Part::Calibration => &mut self.calibration,
            Part::Test => &mut self.test,
        }
    }

    fn part(&self, part: Part) -> &BTreeMap<String, Amount> {
        match part {
            Part::Train => &self.train,
            Part::Calibration => &self.calibration,
            Part::Test => &self.test,
        }
    }

    /// The split's inline TOML table, e.g. `{ Negative = 100, Positive = 100 }`.
    pub fn table(&self, part: Part) -> String {
        let entries: Vec<String> = self
            .part(part)
            .iter()
            .map(|(label, amount)| match amount {
                Amount::Count(n) => format!("{} = {n}", key(label)),
                Amount::Rest => format!("{} = \"rest\"", key(label)),
            })
            .collect();
        format!("{{ {} }}", entries.join(", "))
    }

    /// Total images of (normal, anomalous) in (train, calibration, test).
    pub fn totals(&self) -> [[usize; 3]; 2] {
        self.totals
    }

    /// One line for the job file.
    pub(crate) fn comment(&self) -> String {
        let how = if self.scaled { ",\n# scaled to this folder's counts" } else { "" };
        format!(
            "The reference recipe's split sizes (250 normal images train; 100 + 100 calibrate; 1,000 + 1,000 \
             test){how}.\n# Seeded; identical files never straddle two splits. If several images show one object \
             (views of one part,\n# crops of one photograph), name them in a `groups` file so that no split \
             divides them."
        )
    }

    /// What the split is and why, for the user.
    pub(crate) fn describe(&self) -> String {
        let [[train, cal_n, test_n], [_, cal_a, test_a]] = self.totals;
        let how = if self.scaled {
            "the recipe's proportions (250 : 100 : 1,000 normal, 100 : 1,000 anomalous) scaled to the counts"
        } else {
            "the reference recipe's sizes"
        };
        let mut text = format!(
            "train {train} normal; calibration {cal_n} normal + {cal_a} anomalous; test {test_n} + {test_a} ({how}, seed 0)"
        );
        if self.unused > 0 {
            text.push_str(&format!("; {} images unused", self.unused));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(l, n)| (l.to_string(), *n)).collect()
    }

    #[test]
    fn a_folder_of_the_recipes_size_gets_the_recipes_counts() {
        let plan = plan_split(&counts(&[("Negative", 1500)]), &counts(&[("Positive", 1500)])).unwrap();
        assert_eq!(plan.table(Part::Train), "{ Negative = 250 }");
        assert_eq!(plan.table(Part::Calibration), "{ Negative = 100, Positive = 100 }");
        assert_eq!(plan.table(Part::Test), "{ Negative = 1000, Positive = 1000 }");
        assert_eq!((plan.scaled, plan.unused), (false, 550));
    }

    #[test]
    fn smaller_folders_are_scaled_with_floors_and_labels_dealt_in_proportion() {
        let anomalous = counts(&[("Blowhole", 115), ("Break", 85), ("Crack", 57), ("Fray", 32), ("Uneven", 103)]);
        let plan = plan_split(&counts(&[("Free", 952)]), &anomalous).unwrap();
        // 952 normal: 952 * 250 / 1350 = 176.3, 952 * 100 / 1350 = 70.5 -> 71; 392 anomalous: 35.6 -> 36.
        assert_eq!(plan.totals(), [[176, 71, 705], [0, 36, 356]]);
        assert_eq!(plan.table(Part::Train), "{ Free = 176 }");
        assert_eq!(
            plan.table(Part::Calibration),
            "{ Blowhole = 11, Break = 8, Crack = 5, Fray = 3, Free = 71, Uneven = 9 }"
        );
        assert!(plan.test.values().all(|a| *a == Amount::Rest));
        assert_eq!((plan.scaled, plan.unused), (true, 0));
        // Floors: 50 normal images give 20 / 10 / 20, not 9 / 4 / 37.
        let plan = plan_split(&counts(&[("ok", 50)]), &counts(&[("ng", 30)])).unwrap();
        assert_eq!(plan.totals(), [[20, 10, 20], [0, 10, 20]]);
    }

    #[test]
    fn too_few_images_are_refused_naming_the_minimum() {
        let message = plan_split(&counts(&[("ok", 39)]), &counts(&[("ng", 30)])).unwrap_err().to_string();
        assert!(message.contains("normal images: 39") && message.contains("at least 40"), "{message}");
        let message = plan_split(&counts(&[("ok", 60)]), &counts(&[("ng", 19)])).unwrap_err().to_string();
        assert!(message.contains("anomalous images: 19") && message.contains("at least 20"), "{message}");
    }

    #[test]
    fn dealing_is_exact_and_within_each_label() {
        let shares = deal(&counts(&[("a", 1), ("b", 100)]), 50);
        assert_eq!(shares, [("a".to_string(), 0), ("b".to_string(), 50)]);
        let shares = deal(&counts(&[("a", 3), ("b", 3), ("c", 3)]), 4);
        assert_eq!(shares.iter().map(|s| s.1).sum::<usize>(), 4);
        assert_eq!(key("MT_Free"), "MT_Free");
        assert_eq!(key("with space"), "\"with space\"");
    }
}
