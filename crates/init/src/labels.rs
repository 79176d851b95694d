//! Which label names say "defect-free".

/// Words that mark a label as normal on their own.
const NORMAL_WORDS: [&str; 12] = [
    "good",
    "ok",
    "normal",
    "negative",
    "free",
    "clean",
    "pass",
    "passed",
    "intact",
    "nominal",
    "nodefect",
    "defectfree",
];
/// Words that mean a defect, so that `no_defect` / `non-defective` read as normal.
const DEFECT_WORDS: [&str; 9] =
    ["defect", "defects", "defective", "crack", "cracks", "anomaly", "damage", "fault", "flaw"];
/// Words that negate a normal word (`not_good`, `NG`).
const NEGATIONS: [&str; 3] = ["not", "ng", "bad"];

/// The lower-case words of a label: split at anything that is not a letter or digit and where a
/// lower-case letter is followed by an upper-case one (`MT_Free` -> `mt`, `free`; `defectFree` ->
/// `defect`, `free`).
pub(crate) fn words(label: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in label.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Whether a label's name says its images are defect-free: a normal word (`good`, `OK`, `normal`,
/// `Negative`, `MT_Free`, `defect-free`) or `no`/`non` before a defect word (`no_defect`,
/// `non-defective`), and no negation (`not_good`, `NG`).
pub fn is_normal_name(label: &str) -> bool {
    let words = words(label);
    if words.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
        return false;
    }
    let joined = words.concat();
    if NORMAL_WORDS.contains(&joined.as_str()) || words.iter().any(|w| NORMAL_WORDS.contains(&w.as_str())) {
        return true;
    }
    words.windows(2).any(|pair| ["no", "non"].contains(&pair[0].as_str()) && DEFECT_WORDS.contains(&pair[1].as_str()))
        || DEFECT_WORDS.iter().any(|d| joined == format!("no{d}") || joined == format!("non{d}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_users_give_the_normal_class() {
        for name in [
            "good",
            "OK",
            "Normal",
            "Negative",
            "MT_Free",
            "defect-free",
            "defectFree",
            "no_defect",
            "non-defective",
            "NoDefect",
            "clean",
            "pass",
        ] {
            assert!(is_normal_name(name), "{name}");
        }
        for name in
            ["Positive", "crack", "MT_Blowhole", "bad", "NG", "not_good", "defect", "train_img", "test_lab", "anomaly"]
        {
            assert!(!is_normal_name(name), "{name}");
        }
        assert_eq!(words("MT_Free"), ["mt", "free"]);
        assert_eq!(words("defectFree2"), ["defect", "free2"]);
    }
}
