//! Shard `i` of `n`: which images a process of an array job handles.

use std::fmt;
use std::str::FromStr;

/// Zero-based shard `index` of `count`. Images are assigned in contiguous, deterministic ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole data set in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// The half-open range of item positions (out of `n_items`) that this shard handles. The ranges
    /// of all shards are disjoint, cover every item and differ in length by at most one.
    pub fn range(&self, n_items: usize) -> std::ops::Range<usize> {
        let count = self.count as usize;
        let index = self.index as usize;
        let start = n_items * index / count;
        let end = n_items * (index + 1) / count;
        start..end
    }

    /// A stable, sortable file-name suffix: `00002-of-00004`.
    pub fn tag(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Where the shard of this process comes from: the array-job index of the engine that started it.
///
/// In order: Slurm (`SLURM_ARRAY_TASK_ID` of `SLURM_ARRAY_TASK_COUNT`, an array that starts at 0
/// with step 1), AWS Batch (`AWS_BATCH_JOB_ARRAY_INDEX` of `count`), Kubernetes Indexed Jobs
/// (`JOB_COMPLETION_INDEX` of `count`). `count` is the shard count given to padim (`--shards` or
/// `PADIM_SHARDS`): AWS Batch and Kubernetes do not tell a task the size of its array. `None` when no
/// variable is set.
pub fn from_environment(
    env: impl Fn(&str) -> Option<String>,
    count: Option<u32>,
) -> Result<Option<(Shard, &'static str)>, ShardError> {
    let number = |name: &'static str| -> Result<Option<u32>, ShardError> {
        match env(name) {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| ShardError::Variable { name, value: text }),
        }
    };
    if let Some(index) = number("SLURM_ARRAY_TASK_ID")? {
        let slurm_count = number("SLURM_ARRAY_TASK_COUNT")?;
        let count = slurm_count.or(count).ok_or(ShardError::NoCount { variable: "SLURM_ARRAY_TASK_ID" })?;
        if let (Some(min), Some(max)) = (number("SLURM_ARRAY_TASK_MIN")?, number("SLURM_ARRAY_TASK_MAX")?)
            && (min != 0 || max + 1 != count)
        {
            return Err(ShardError::SlurmArray { min, max, count });
        }
        return Ok(Some((Shard::new(index, count)?, "SLURM_ARRAY_TASK_ID")));
    }
    for name in ["AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX"] {
        if let Some(index) = number(name)? {
            let count = count.ok_or(ShardError::NoCount { variable: name })?;
            return Ok(Some((Shard::new(index, count)?, name)));
        }
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("environment variable {name} = `{value}` is not a shard index")]
    Variable { name: &'static str, value: String },
    #[error("{variable} is set but the shard count is not: pass --shards N (or set PADIM_SHARDS)")]
    NoCount { variable: &'static str },
    #[error(
        "the Slurm array runs tasks {min}..={max} but has {count} tasks: submit it as --array=0-{last}",
        last = count.saturating_sub(1)
    )]
    SlurmArray { min: u32, max: u32, count: u32 },
    #[error("shard {index}/{count} is out of range: the index must be in 0..{count} and the count at least 1")]
    OutOfRange { index: u32, count: u32 },
    #[error("cannot parse shard `{0}`: write it as INDEX/COUNT, e.g. 0/4")]
    Syntax(String),
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(text: &str) -> Result<Shard, ShardError> {
        let (index, count) = text.split_once('/').ok_or_else(|| ShardError::Syntax(text.to_string()))?;
        let index = index.trim().parse().map_err(|_| ShardError::Syntax(text.to_string()))?;
        let count = count.trim().parse().map_err(|_| ShardError::Syntax(text.to_string()))?;
        Shard::new(index, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_the_items() {
        for n_items in [0usize, 1, 7, 100, 2001] {
            for count in 1..9u32 {
                let mut next = 0;
                for index in 0..count {
                    let range = Shard::new(index, count).unwrap().range(n_items);
                    assert_eq!(range.start, next);
                    assert!(range.len() <= n_items / count as usize + 1);
                    next = range.end;
                }
                assert_eq!(next, n_items);
            }
        }
    }

    #[test]
    fn array_job_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(from_environment(env(&[]), Some(4)).unwrap(), None);
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(from_environment(slurm, None).unwrap(), Some((Shard { index: 2, count: 4 }, "SLURM_ARRAY_TASK_ID")));
        let batch = env(&[("AWS_BATCH_JOB_ARRAY_INDEX", "7")]);
        assert_eq!(from_environment(batch, Some(8)).unwrap().unwrap().0, Shard { index: 7, count: 8 });
        let message = from_environment(batch, None).unwrap_err().to_string();
        assert!(message.contains("AWS_BATCH_JOB_ARRAY_INDEX") && message.contains("--shards"), "{message}");
        let k8s = env(&[("JOB_COMPLETION_INDEX", "3")]);
        assert!(matches!(from_environment(k8s, Some(3)), Err(ShardError::OutOfRange { index: 3, count: 3 })));
        let bad = env(&[("JOB_COMPLETION_INDEX", "x")]);
        assert!(matches!(from_environment(bad, Some(3)), Err(ShardError::Variable { .. })));
        let offset = env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
        ]);
        assert!(matches!(from_environment(offset, None), Err(ShardError::SlurmArray { .. })));
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard { index: 2, count: 4 });
        assert!(matches!("4/4".parse::<Shard>(), Err(ShardError::OutOfRange { .. })));
        assert!(matches!("x".parse::<Shard>(), Err(ShardError::Syntax(_))));
        assert_eq!(Shard::ALL.tag(), "00000-of-00001");
    }
}
